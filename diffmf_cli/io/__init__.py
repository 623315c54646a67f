"""Image files in and out: pairing by file stem (`pairs`), reading/writing and colour (`images`)."""

from diffmf_cli.io.images import (
    bit_depth,
    from_float,
    is_gray,
    read_gray_float,
    read_image,
    rgb_to_ycrcb,
    to_float,
    to_gray,
    write_image,
    ycrcb_to_rgb,
)
from diffmf_cli.io.pairs import (
    IMAGE_EXTENSIONS,
    Pair,
    Pairing,
    is_image_file,
    list_images,
    pair_folders,
    parse_shard,
    read_pair_list,
    select_shard,
    shard_of,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "Pair",
    "Pairing",
    "bit_depth",
    "from_float",
    "is_gray",
    "is_image_file",
    "list_images",
    "pair_folders",
    "parse_shard",
    "read_gray_float",
    "read_image",
    "read_pair_list",
    "rgb_to_ycrcb",
    "select_shard",
    "shard_of",
    "to_float",
    "to_gray",
    "write_image",
    "ycrcb_to_rgb",
]
