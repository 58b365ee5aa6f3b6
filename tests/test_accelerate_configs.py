"""The accelerate launch configs under configs/accelerate load with accelerate's own config
reader and name a backend it knows (FSDP and DeepSpeed need CUDA: not run here)."""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))


def test_there_is_a_config_per_backend():
    assert {p.stem for p in CONFIGS} == {
        "ddp",
        "multinode",
        "fsdp-lora",
        "deepspeed-zero2",
        "deepspeed-zero3",
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_reads_each_config(path):
    config = ClusterConfig.from_yaml_file(path)
    assert config.distributed_type in {
        DistributedType.MULTI_GPU,
        DistributedType.FSDP,
        DistributedType.DEEPSPEED,
    }
    assert config.num_processes >= 2 and config.num_machines >= 1
    if config.distributed_type == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "Qwen3DecoderLayer"
    if config.distributed_type == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] in (2, 3)
