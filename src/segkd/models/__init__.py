"""SegFormer models (timm MiT encoder + all-MLP decoder) and checkpoint import/export."""

from segkd.models.segformer import SIZES, SegFormer, SegOutput, create_model
from segkd.models.weights import CheckpointError, load_pretrained, read_state_dict, to_nvlabs

__all__ = ["SIZES", "SegFormer", "SegOutput", "create_model", "CheckpointError", "load_pretrained",
           "read_state_dict", "to_nvlabs"]
