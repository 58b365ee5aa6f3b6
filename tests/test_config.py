import pytest

from dmporec.config import ConfigError, load_config


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: runs/x\ndmpo: {k: 2}\n")
    cfg = load_config(
        path,
        [
            "dmpo.beta=0.5",
            "model.name=builtin:tiny-qwen3",
            "data.title_normalization.strip_year=true",
        ],
    )
    assert (cfg.output_dir, cfg.dmpo.k, cfg.dmpo.beta) == ("runs/x", 2, 0.5)
    assert cfg.model.name == "builtin:tiny-qwen3" and cfg.data.title_normalization.strip_year


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["dmpo.kk=2"], "dmpo.kk"),
        (["dmpo.k=0"], "dmpo.k"),
        (["sft.layout=fast"], "sft.layout"),
        (["dmpo"], "expected section.key=value"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(None, overrides)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if "\ncells:" in path.read_text():  # an experiment file: its base and cells must load
            from dmporec.stages.experiment import cell_config, load_experiment

            exp = load_experiment(str(path))
            for cell in exp.cells:
                cell_config(exp, cell)
        else:
            load_config(path)
        assert path.read_text().startswith("# dmporec"), (
            f"{path.name} should open with the command that uses it"
        )
