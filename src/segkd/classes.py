"""The 11 CamVid classes: names, order, palette and the void label, defined once.

Every dataset in segkd (CamVid and the synthetic street scenes) uses exactly this label space,
so tables, plots and metrics agree on column order everywhere.
"""

CLASS_NAMES: tuple[str, ...] = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Sidewalk",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
NUM_CLASSES = len(CLASS_NAMES)

# Label value used for void / unlabelled pixels in prepared arrays; losses and metrics ignore it.
IGNORE_INDEX = 255
# Label value SegNet's CamVid annotation uses for void ("Unlabelled").
SEGNET_VOID = 11

# SegNet tutorial palette (RGB), one colour per class, for visualisation.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),  # Sky
    (128, 0, 0),  # Building
    (192, 192, 128),  # Pole
    (128, 64, 128),  # Road
    (0, 0, 192),  # Sidewalk
    (128, 128, 0),  # Tree
    (192, 128, 128),  # SignSymbol
    (64, 64, 128),  # Fence
    (64, 0, 128),  # Car
    (64, 64, 0),  # Pedestrian
    (0, 128, 192),  # Bicyclist
)
VOID_COLOUR = (0, 0, 0)
