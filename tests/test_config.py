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

    root = Path(__file__).parents[1] / "configs"
    # configs/accelerate holds accelerate's own files (tests/test_accelerate_configs.py)
    configs = sorted([*root.glob("*.yaml"), *root.glob("experiments/*.yaml")])
    assert root / "experiments" / "learning-curve-ml1m.yaml" in configs
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


def test_operational_fields_are_marked_on_the_models():
    """How fast, how often or where: marked on the config models, left out of every settings
    record; everything else, training's batch size included, counts."""
    from dmporec.config import flat_settings, operational_keys

    assert operational_keys() == {
        "output_dir",
        "zero_shot",
        "baselines",
        "hybrid",
        "model.attention",
        "model.trust_remote_code",
        *(
            f"{stage}.{key}"
            for stage in ("sft", "dmpo")
            for key in (
                "layout",
                "max_batch_tokens",
                "gradient_checkpointing",
                "save_every_steps",
                "eval_every_steps",
                "report_to",
            )
        ),
        "eval.batch_size",
        "eval.layout",
        "eval.max_batch_tokens",
    }
    flat = flat_settings(load_config(None))
    assert not operational_keys() & flat.keys()
    assert {
        "sft.batch_size",
        "dmpo.batch_size",
        "data.title_normalization.strip_year",
    } <= flat.keys()


def test_one_fingerprint_for_stages_and_experiments(tmp_path):
    """A stage's settings.json and an experiment cell's row ask the same function: an operational
    field changes neither, a result's field changes both, and settings_changes says which."""
    from dmporec.config import flat_settings
    from dmporec.stages.common import settings_changes, stage_settings

    base = ["data.sft_train=x.jsonl", "data.eval=y.jsonl"]

    def both(extra: list[str]) -> tuple[dict, dict]:
        cfg = load_config(None, [*base, *extra])
        return stage_settings(cfg, "sft"), flat_settings(cfg)

    sft, cell = both([])
    for fast in ("sft.save_every_steps=5", "sft.layout=naive", "eval.batch_size=1",
                 "model.attention=eager", "output_dir=elsewhere", "hybrid=false"):  # fmt: skip
        assert both([fast]) == (sft, cell), fast
    for changed in ("sft.batch_size=3", "sft.seed=1", "data.prompt_seed=2"):
        sft2, cell2 = both([changed])
        key = changed.split("=")[0]
        assert settings_changes(sft, sft2).startswith(f"{key}: ")
        assert settings_changes(cell, cell2).startswith(f"{key}: ")
    # A record made before a field was marked operational (or existed) still matches.
    older = {**cell, "zero_shot": True, "baselines": True}
    older.pop("data.overlong")
    assert settings_changes(older, cell) == ""
    assert "sft.seed: 42 then, 1 now" in settings_changes(cell, both(["sft.seed=1"])[1])


def test_a_run_trained_before_a_setting_existed_is_still_this_run(tmp_path):
    """prepare_run checks the DMPO stage against the SFT stage as recorded (as dmpo and evaluate
    do): a run trained before model.item_tokens existed is not refused for its parent's
    fingerprint, while a real change to either stage still is."""
    from dmporec.stages.common import prepare_run, record_settings, stage_settings

    def config(*extra: str):
        return load_config(None, [f"output_dir={tmp_path}", "data.sft_train=x.jsonl",
                                  "data.dmpo_train=z.jsonl", "data.eval=y.jsonl", *extra])  # fmt: skip

    sft = stage_settings(config(), "sft")
    del sft["model.item_tokens"]  # as a dmporec from before model.item_tokens recorded it
    dmpo = stage_settings(config(), "dmpo", sft)
    del dmpo["model.item_tokens"]
    for stage, settings in (("sft", sft), ("dmpo", dmpo)):
        (tmp_path / stage).mkdir()
        record_settings(tmp_path / stage, settings)
        (tmp_path / stage / "lineage.json").write_text("{}")
    prepare_run(config())
    with pytest.raises(ConfigError, match=r"dmpo: .* other settings \(dmpo.beta: 0.1 then, 0.5"):
        prepare_run(config("dmpo.beta=0.5"))
    with pytest.raises(ConfigError, match=r"sft: .* other settings \(sft.seed: 42 then, 1 now"):
        prepare_run(config("sft.seed=1"))
    # An SFT record without results (an SFT that never trained) is not what DMPO stands on: the
    # DMPO stage is checked against the SFT this run would train.
    (tmp_path / "sft" / "lineage.json").unlink()
    with pytest.raises(ConfigError, match=r"dmpo: .* other settings \(trained: "):
        prepare_run(config("sft.seed=1"))
