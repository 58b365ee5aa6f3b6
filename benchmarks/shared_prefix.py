"""Shared-prefix scoring vs the peers' naive pairwise rows: DMPO training steps and evaluation.

    .venv/bin/python benchmarks/shared_prefix.py [--users 4] [--steps 2] [--eval-pairs 200]
        [--ks 1,3,5] [--orders listed,both] [--eval-methods shared,cached]
        [--max-batch-tokens 8192] [--warmup 1] [--repeats 1] [--profile DIR] [--out FILE]

Data: the authors' rec_Amazon_Movie_dpo_ranking_{1,3,5}.json and eval file (../shared/data/dmpo);
model: packaged SmolLM2-135M-Instruct, fp32, 2 threads. Every cell runs in a fresh process so
its peak RSS is its own. Training cells do the same DMPO steps (same users, same LoRA init):
- naive: one row per answer with its full prompt, and the reference forward in every step
  (how LLaMA-Factory and TRL's DPOTrainer do it by default), one user per forward and
  backward (a batch of users' naive rows does not fit in memory at k=5);
- shared: one packed row per user (block attention mask) after the stem all users share, the
  step's users in one call as `dmporec train` scores a micro-batch; reference log-probs
  computed once before training, for the warm-up and the timed users (a run pays this pass
  once, and `dmporec dmpo` caches it across runs): the steps' speed-up leaves it out, the "one
  epoch" speed-up adds its time per user, as for TRL with `precompute_ref_log_probs` (timed in
  its constructor, where TRL computes it).
Evaluation scores each test pair in the listed candidate order, and in both orders (the
default of `dmporec evaluate`: 2 prompts per pair, 4 answers), naive against the packed trie
("shared") and against the trie behind a KV-cached prefix ("cached", `eval.layout=cached`).
Every layout runs with the same `max_batch_tokens` (the library's default, 8192). Tokens are
those the forward passes encode, padding excluded. "limit" is the speed-up if each token cost
what it costs in the naive cell: the token ratio for evaluation; for training, where naive's
reference tokens are forward-only and cheaper than its policy tokens, naive's step time over its
policy rows' time per token times shared's tokens. With `--repeats N` every cell runs N times,
all cells once per round, and the table gives the median. Every training cell first runs
`--warmup` untimed steps on other users (the first step pays one-time costs: the allocator's first
blocks, the kernels' first backward), as the TRL cells time steps after their first.
Prints a table and writes benchmarks/results/shared_prefix.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import zlib
from pathlib import Path

from shared_prefix_tables import peer_table, speedup_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dmpo"
RESULTS = Path(__file__).resolve().parent / "results" / "shared_prefix.json"


def cell(
    kind: str,
    method: str,
    k: int,
    users: int,
    steps: int,
    eval_pairs: int,
    orders: str = "listed",
    budget: int = 8192,
    model_name: str | None = None,
    warmup: int = 0,
    profile: Path | None = None,
) -> dict:
    """One cell; `warmup` training steps on other users run first, untimed. With `profile`, the
    timed training steps run under torch.profiler (slower), its op tables go to that file and the
    row gets the CPU seconds of each op family."""
    import torch

    torch.set_num_threads(2)
    from dmporec.alpaca import read_alpaca
    from dmporec.collate import GroupEncoder
    from dmporec.losses import dmpo_loss
    from dmporec.model import (
        BUILTIN_SMOLLM2,
        ModelConfig,
        add_lora,
        load_base_model,
        load_tokenizer,
    )
    from dmporec.prompts import ChatFormat
    from dmporec.records import TitleNormalization
    from dmporec.scoring import length_order, score_groups

    cfg = ModelConfig(name=model_name or BUILTIN_SMOLLM2)
    tok = load_tokenizer(cfg)
    enc = GroupEncoder(tok, ChatFormat.from_tokenizer(tok))
    norm = TitleNormalization()
    if kind == "eval":
        model = load_base_model(cfg).eval()
        groups = [
            enc.group(r, orders=orders)
            for r in read_alpaca(DATA / "rec_Amazon_Movie_eval_ranking.json", norm)[:eval_pairs]
        ]
        tokens = 0
        with torch.no_grad():
            score_groups(model, groups[:2], layout=method)  # warm-up
            start = time.perf_counter()
            # as `dmporec evaluate` batches: 16 users a call, in length order
            order = length_order(groups)
            logps = torch.zeros(len(groups), groups[0].n_answers)
            for i in range(0, len(order), 16):
                chunk = order[i : i + 16]
                scores = score_groups(
                    model, [groups[u] for u in chunk], layout=method, max_batch_tokens=budget
                )
                logps[chunk], tokens = scores.logps, tokens + scores.encoded
        wall = time.perf_counter() - start
        return {
            "kind": kind,
            "method": method,
            "k": k,
            "pairs": len(groups),
            "wall_s": wall,
            "pairs_per_s": len(groups) / wall,
            "tokens": tokens,
            "orders": orders,
            # chosen answers are the even columns: sum over the listings, then compare
            "accuracy": (logps[:, 0::2].sum(1) > logps[:, 1::2].sum(1)).float().mean().item(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    torch.manual_seed(0)
    model = add_lora(load_base_model(cfg), cfg)
    for name, p in model.named_parameters():  # a trained-looking adapter, identical in every cell
        if "lora_B" in name:
            p.data.normal_(
                0, 0.01, generator=torch.Generator().manual_seed(zlib.crc32(name.encode()))
            )
    records = read_alpaca(DATA / f"rec_Amazon_Movie_dpo_ranking_{k}.json", norm)
    groups = [enc.group(r, k=k) for r in records[: users * (warmup + steps)]]
    # The warm-up steps take the users after the timed ones: the timed users are the same
    # whatever the warm-up.
    groups = groups[users * steps :] + groups[: users * steps]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def reference(batch):
        with torch.no_grad(), model.disable_adapter():
            out = score_groups(model, batch, layout=method, max_batch_tokens=budget)
            return out.logps, out.encoded

    ref_start = time.perf_counter()
    precomputed = (
        [reference(groups[i : i + users])[0] for i in range(0, len(groups), users)]
        if method == "shared"
        else None
    )
    ref_wall = time.perf_counter() - ref_start
    losses, step_times, tokens = [], [], 0
    policy_tokens, reference_s = 0, 0.0  # naive: the policy's share, and the reference's time
    profiler = torch.profiler.profile(record_shapes=True) if profile else None
    for s in range(warmup + steps):
        if s == warmup:  # the timed steps start here
            losses, step_times, tokens, policy_tokens, reference_s = [], [], 0, 0, 0.0
            if profiler is not None:
                profiler.start()
        batch = groups[s * users : (s + 1) * users]
        start = time.perf_counter()
        step_loss = 0.0
        # naive: one user per forward and backward; shared: the step's users in one call
        calls = [batch[u : u + 1] for u in range(len(batch))] if precomputed is None else [batch]
        for call in calls:
            if precomputed is None:
                ref_start = time.perf_counter()
                ref, ref_tokens = reference(call)
                tokens += ref_tokens
                reference_s += time.perf_counter() - ref_start
            else:
                ref = precomputed[s]
            scores = score_groups(model, call, layout=method, max_batch_tokens=budget)
            tokens += scores.encoded
            policy_tokens += scores.encoded
            out = dmpo_loss(
                scores.logps[:, 0::2],
                scores.logps[:, 1::2],
                ref[:, 0::2],
                ref[:, 1::2],
                0.1,
                scores.mask[:, 1::2],
            )
            (out.loss.sum() / len(batch)).backward()
            step_loss += out.loss.sum().item() / len(batch)
        optimizer.step()
        optimizer.zero_grad()
        step_times.append(time.perf_counter() - start)
        losses.append(step_loss)
    wall = sum(step_times)
    shares = _profile(profiler, profile) if profiler is not None else None
    return {
        "kind": kind,
        "method": method,
        "k": k,
        "users": users * steps,
        "warmup_steps": warmup,
        "wall_s": wall,
        "users_per_s": users * steps / wall,
        "tokens": tokens,
        "policy_tokens": policy_tokens,
        "reference_in_step_s": reference_s,
        "losses": losses,
        "reference_once_s": ref_wall if precomputed is not None else None,
        "reference_users": len(groups) if precomputed is not None else 0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "profile": shares,
    }


def _profile(profiler, out: Path) -> dict:
    """Stop `profiler`, write its op tables (by op, and by op and input shapes) to `out` and
    return the CPU seconds of the timed steps by op family."""
    profiler.stop()
    ops = profiler.key_averages()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        ops.table(sort_by="self_cpu_time_total", row_limit=25)
        + "\n"
        + profiler.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=25
        )
    )
    families = {"matmul": ("aten::mm", "aten::bmm", "aten::addmm"), "attention": ("scaled_dot",)}
    shares = {"total_s": sum(e.self_cpu_time_total for e in ops) / 1e6}
    for family, names in families.items():
        shares[f"{family}_s"] = (
            sum(e.self_cpu_time_total for e in ops if any(n in e.key for n in names)) / 1e6
        )
    return shares


def trl_cell(
    k: int, users: int, steps: int, precompute: bool, model_name: str | None = None
) -> dict:
    """The peer as a user runs it: TRL's DPOTrainer with a LoRA `peft_config`, the same users'
    pairs as rows (prompt, chosen, rejected: our texts, one row per negative), `users` rows per
    micro-batch and k accumulation steps (the users x k rows of one of our steps), lr 1e-4, beta
    0.1, no truncation; the reference forward in every step (TRL's default) or precomputed once
    (`precompute_ref_log_probs`). Timed per optimizer step by a callback; the first step
    (warm-up) is not counted, so it runs steps + 1 of them. Needs TRL: `make peers`."""
    import torch

    torch.set_num_threads(2)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from dmporec.alpaca import read_alpaca
    from dmporec.model import (
        BUILTIN_SMOLLM2,
        ModelConfig,
        load_base_model,
        load_tokenizer,
        lora_config,
    )
    from dmporec.prompts import ChatFormat, render_pairs
    from dmporec.records import TitleNormalization

    cfg = ModelConfig(name=model_name or BUILTIN_SMOLLM2)
    tok = load_tokenizer(cfg)
    chat = ChatFormat.from_tokenizer(tok)
    records = read_alpaca(DATA / f"rec_Amazon_Movie_dpo_ranking_{k}.json", TitleNormalization())
    rows = [
        {
            "prompt": chat.prefix + pair.instruction.shared + pair.instruction.pair + chat.suffix,
            "chosen": pair.chosen + chat.answer_end,
            "rejected": pair.rejected + chat.answer_end,
        }
        for r in records[: users * (steps + 1)]
        for pair in render_pairs(r)[:k]
    ]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)

    class Timed(DPOTrainer):
        """TRL precomputes the reference log-probs in its constructor: timed here."""

        precompute_s = 0.0

        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                type(self).precompute_s += time.perf_counter() - start

    clock = Clock()
    torch.manual_seed(0)
    trainer = Timed(
        model=load_base_model(cfg),
        args=DPOConfig(
            output_dir=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"trl-cell-{os.getpid()}"),
            per_device_train_batch_size=users,
            gradient_accumulation_steps=k,
            max_steps=steps + 1,
            learning_rate=1e-4,
            beta=0.1,
            max_length=None,
            precompute_ref_log_probs=precompute,
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            dataloader_num_workers=0,
            seed=0,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora_config(cfg),  # the LoRA dmporec trains
        callbacks=[clock],
    )
    trainer.train()
    if precompute and not trainer.precompute_s:
        raise RuntimeError("TRL's reference precompute was not timed: has TRL renamed it?")
    timed = clock.times[1:]
    data = trainer.train_dataset
    # Tokens of the forward passes: prompt + chosen and prompt + rejected for every row, again
    # for the reference unless precomputed; the timed steps' share of the rows (TRL shuffles).
    per_row = [
        2 * len(p) + len(c) + len(r)
        for p, c, r in zip(
            data["prompt_ids"], data["chosen_ids"], data["rejected_ids"], strict=True
        )
    ]
    tokens = round(sum(per_row) * steps / (steps + 1)) * (1 if precompute else 2)
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    return {
        "kind": "train",
        "method": "trl-precompute" if precompute else "trl",
        "k": k,
        "users": users * steps,
        "wall_s": sum(timed),
        "users_per_s": users * steps / sum(timed),
        "tokens": tokens,
        "losses": losses[1:],
        "reference_once_s": trainer.precompute_s if precompute else None,
        "reference_users": users * (steps + 1) if precompute else 0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=4, help="users per training step")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--ks", default="1,3,5")
    parser.add_argument("--orders", default="listed,both", help="evaluation listings to time")
    parser.add_argument(
        "--eval-methods", default="shared,cached", help="evaluation layouts to time against naive"
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, default=8192, help="micro-batch budget of every layout"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed training steps before the timed ones"
    )
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all cells (median)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the timed training steps under torch.profiler (slower) and write each cell's "
        "op tables to this folder (with --repeats, the last round's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--peers",
        action="store_true",
        help="also TRL's DPOTrainer (default and precompute_ref_log_probs) on the same users",
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.cell:
        kind, method, k, orders = args.cell.split(":")
        if method.startswith("trl"):
            result = trl_cell(int(k), args.users, args.steps, method == "trl-precompute")
            print(json.dumps(result))
            return
        result = cell(
            kind,
            method,
            int(k),
            args.users,
            args.steps,
            args.eval_pairs,
            orders,
            args.max_batch_tokens,
            warmup=args.warmup,
            profile=args.profile / f"{kind}-{method}-k{k}.txt" if args.profile else None,
        )
        print(json.dumps(result))
        return
    if not DATA.is_dir():
        sys.exit(f"needs the authors' files in {DATA}")
    ks = [int(k) for k in args.ks.split(",") if k]
    if args.peers and importlib.util.find_spec("trl") is None:
        sys.exit(
            "--peers needs TRL: `make peers`, then PYTHONPATH=.venv-peers (`make bench-peers`)"
        )
    trainers = ("naive", "shared", "trl", "trl-precompute") if args.peers else ("naive", "shared")
    cells = [("train", m, k, "listed") for k in ks for m in trainers]
    eval_methods = ["naive", *(m for m in args.eval_methods.split(",") if m)]
    cells += [("eval", m, 1, o) for o in args.orders.split(",") if o for m in eval_methods]
    results = []
    for round_ in range(args.repeats):
        for kind, method, k, orders in cells:
            cmd = [
                sys.executable,
                __file__,
                "--cell",
                f"{kind}:{method}:{k}:{orders}",
                "--users",
                str(args.users),
                "--steps",
                str(args.steps),
                "--eval-pairs",
                str(args.eval_pairs),
                "--max-batch-tokens",
                str(args.max_batch_tokens),
                "--warmup",
                str(args.warmup),
                *(["--profile", str(args.profile)] if args.profile else []),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(
                    f"cell {kind}:{method}:{k}:{orders} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
                )
            results.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "round": round_})
            _write(args, results, table=None)  # a cell's numbers survive a later failure
            print(
                f"done: {kind} {method} k={k} {orders}: {results[-1]['wall_s']:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    table = speedup_table(results)
    peers = peer_table(results)
    if peers:
        table += "\n\n" + peers
    print(table)
    _write(args, results, table)


def _write(args: argparse.Namespace, results: list[dict], table: str | None) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"date": time.strftime("%Y-%m-%d"), "args": settings}
    record["cells"] = results
    if table is None:
        record["unfinished"] = True
    else:
        record["table"] = table
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
