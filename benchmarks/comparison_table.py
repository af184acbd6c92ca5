"""One table, measured (issue #24): every registered algorithm at one budget, on held-out Omniglot characters.

Each row trains one algorithm with the CLI exactly as a user would (`python -m maml_lab train --task images ...`,
its own image defaults, one budget for all: --iterations and --meta-batch-size, seed 0, one thread), then evaluates
the export with `python -m maml_lab eval` on the held-out characters, 5-way 1-shot and 5-shot, in two batch-norm
modes (transductive, the papers'; support, the support set's statistics only: core/models/batch_norm.py), with the
evaluation cards `eval --json` writes. Two settings:

* small1: trained on images_background_small1.zip (the lab's split: 95 characters x4 rotations meta-train, 41 are
  held out), evaluated on its 41 held-out characters;
* small1+small2: trained on `--data small1 --data small2` (292 characters: 204 x4 rotations meta-train, 88 held
  out), evaluated on its 88 held-out characters.

Rows run as separate processes, several at a time (--jobs), each niced and on one thread; training time is the
train command's wall time and its CPU time (user + system, from the process's resource usage: comparable across
rows when the machine is shared, wall time is not). A row's result is kept in --out-dir (JSON) and not rerun
unless --force, so a later call adds algorithms registered since. A row whose algorithm is not registered, or
whose training or evaluation fails, says so in the table.

    python benchmarks/comparison_table.py --jobs 3 --markdown runs/comparison/table.md
    python benchmarks/comparison_table.py --algorithms maml protonet --settings small1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "omniglot"
SETTINGS = {
    "small1": ("images_background_small1.zip",),
    "small1+small2": ("images_background_small1.zip", "images_background_small2.zip"),
}
# the #24 algorithms other sessions add; a row for each says whether it has landed
EXPECTED = ("protonet", "baseline", "baselinepp", "imaml", "cavia")
MODES = ("transductive", "support")
SHOTS = (1, 5)


def registered() -> list[str]:
    from maml_lab.core.algorithms.registry import algorithm_names

    return list(algorithm_names())


def budget_flags(args, algorithm: str) -> list[str]:
    """The one budget every row trains at. Reptile's own meta-batch option (supervised-reptile's 5 tasks) is set to
    0, every task of the meta-batch, so that it sees as many training tasks as the others."""
    flags = ["--iterations", str(args.iterations), "--meta-batch-size", str(args.meta_batch_size),
             "--seed", str(args.seed), "--threads", "1", "--val-every", "0", "--quiet"]
    if algorithm == "reptile":
        flags += ["--option", "reptile.meta_batch=0"]
    return flags


def commands(args, setting: str, algorithm: str, folder: Path) -> tuple[list[str], list[str]]:
    data = [a for name in SETTINGS[setting] for a in ("--data", str(args.data_dir / name))]
    init = folder / "init.safetensors"
    train = [sys.executable, "-m", "maml_lab", "train", "--task", "images", *data, "--algorithm", algorithm,
             *budget_flags(args, algorithm), "--run-dir", str(folder / "run"), "--out", str(init)]
    evaluate = [sys.executable, "-m", "maml_lab", "eval", str(init), "--shots", *map(str, SHOTS), "--bn", *MODES,
                "--tasks", str(args.tasks), "--threads", "1", "--json", str(folder / "eval.json")]
    return train, evaluate


def _run(cmd: list[str], log: Path) -> tuple[int, float, float]:
    """Run niced on one thread; (exit code, wall s, CPU s of the process and its children)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    start = time.monotonic()
    with open(log, "a") as out:
        out.write("$ " + shlex.join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                preexec_fn=lambda: os.nice(10))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.monotonic() - start, usage.ru_utime + usage.ru_stime


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def run_row(args, setting: str, algorithm: str) -> dict:
    folder = args.out_dir / setting / algorithm
    folder.mkdir(parents=True, exist_ok=True)
    train, evaluate = commands(args, setting, algorithm, folder)
    row = {"setting": setting, "algorithm": algorithm, "iterations": args.iterations,
           "meta_batch_size": args.meta_batch_size, "tasks": args.tasks,
           "commands": [_display(train, folder, args.data_dir), _display(evaluate, folder, args.data_dir)]}
    log = folder / "log.txt"
    log.write_text("")
    code, wall, cpu = _run(train, log)
    row.update(train_wall_s=round(wall, 1), train_cpu_s=round(cpu, 1))
    if code != 0:
        return {**row, "status": "failed", "error": f"train exit {code}: {_last_line(log)}"}
    code, wall, cpu = _run(evaluate, log)
    row.update(eval_wall_s=round(wall, 1), eval_cpu_s=round(cpu, 1))
    if code != 0:
        return {**row, "status": "failed", "error": f"eval exit {code}: {_last_line(log)}"}
    ev = json.loads((folder / "eval.json").read_text())["evaluations"][0]
    cards = ev.get("cards") or {ev["card"]["batch_norm_mode"]: ev["card"]}
    return {**row, "status": "ok", "results": ev["results"], "cards": {k: c["text"] for k, c in cards.items()},
            "card": cards[MODES[0]]}


def _display(cmd: list[str], folder: Path, data_dir: Path) -> str:
    """The command as a user types it in a folder with the zips: `python -m maml_lab ...`, files by name."""
    words = ["python", *(w.replace(str(folder) + "/", "").replace(str(data_dir) + "/", "") for w in cmd[1:])]
    return shlex.join(words)


def result_path(args, setting: str, algorithm: str) -> Path:
    return args.out_dir / setting / algorithm / "result.json"


def load_rows(args, algorithms: list[str]) -> dict:
    rows = {}
    for setting in args.settings:
        for name in algorithms:
            path = result_path(args, setting, name)
            if path.is_file():
                rows[(setting, name)] = json.loads(path.read_text())
    return rows


def _cell(row: dict, shots: int, mode: str) -> str:
    for r in row.get("results", []):
        if r["shots"] == shots and r.get("batch_norm") == mode:
            return f"{100 * r['mean']:.1f}% ± {100 * r['ci95']:.1f}"
    return "–"


def _duration(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds:,.0f} s"


def markdown(args, rows: dict, algorithms: list[str], available: set[str]) -> str:
    out = []
    for setting in args.settings:
        held = "41 held-out small1 characters" if setting == "small1" else "88 held-out small1+small2 characters"
        out += [f"#### Trained on {setting}, evaluated on its {held}", "",
                "| algorithm | fine-tuning at test (card) | 1-shot transductive | 1-shot support | 5-shot transductive "
                "| 5-shot support | training wall / CPU |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for name in algorithms:
            row = rows.get((setting, name))
            if name not in available:
                out.append(f"| {name} | not landed in this session | – | – | – | – | – |")
            elif row is None:
                out.append(f"| {name} | not run | – | – | – | – | – |")
            elif row["status"] != "ok":
                out.append(f"| {name} | **failed**: {row['error'][:160]} | – | – | – | – | "
                           f"{_duration(row.get('train_wall_s'))} / {_duration(row.get('train_cpu_s'))} |")
            else:
                card = row["card"]
                steps = "/".join(str(s) for s in card["steps"])
                test = (card["inner_optimizer"] if card["steps"] == [0] else
                        f"{steps} step{'s' if card['steps'] != [1] else ''} of {card['inner_optimizer']}")
                test = test.replace("|", "\\|")  # a norm's bars would end the table cell
                cells = [_cell(row, s, m) for s in SHOTS for m in MODES]
                out.append(f"| {name} | {test} | {' | '.join(cells)} | {_duration(row['train_wall_s'])} / "
                           f"{_duration(row['train_cpu_s'])} |")
        out.append("")
        ran = [rows[(setting, n)] for n in algorithms if (setting, n) in rows]
        if ran:
            out += ["<details><summary>Commands of each row</summary>", ""]
            for row in ran:
                out.append(f"- {row['algorithm']}: `{row['commands'][0]}` then `{row['commands'][1]}`")
            out += ["", "</details>", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", help="default: every registered one, and the #24 ones expected")
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    # the budget a 2-core machine shared by eight sessions could afford for ~26 rows in an hour (docs/image_tasks.md)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--meta-batch-size", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=100, help="held-out tasks per evaluation cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=4, help="rows run at the same time (each one process, niced)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "comparison")
    parser.add_argument("--markdown", type=Path, help="write the table here (default: print it)")
    parser.add_argument("--force", action="store_true", help="rerun rows that have a result")
    parser.add_argument("--table-only", action="store_true", help="write the table from the results there are")
    args = parser.parse_args(argv)
    for name in {n for s in args.settings for n in SETTINGS[s]}:
        if not (args.data_dir / name).is_file():
            print(f"not found: {args.data_dir / name}", file=sys.stderr)
            return 2
    available = set(registered())
    algorithms = args.algorithms or [*registered(), *(n for n in EXPECTED if n not in available)]
    args.out_dir = args.out_dir.resolve()
    todo = [(s, n) for s in args.settings for n in algorithms if n in available
            and (args.force or not result_path(args, s, n).is_file())]
    if not args.table_only and todo:
        # the costliest first, so that the pool ends together
        order = {"mamlpp": 0, "imaml": 1, "reptile": 2, "boil": 3, "anil": 4, "cavia": 5}
        todo.sort(key=lambda t: (order.get(t[1], 9), t[0]))
        print(f"{len(todo)} rows, {args.jobs} at a time: {', '.join(f'{n} ({s})' for s, n in todo)}", flush=True)

        def one(item):
            setting, name = item
            try:
                row = run_row(args, setting, name)
            except Exception as exc:  # a row's failure is a row of the table, not the end of the others
                row = {"setting": setting, "algorithm": name, "status": "failed", "error": f"{type(exc).__name__}: "
                       f"{exc}"}
            result_path(args, setting, name).write_text(json.dumps(row, indent=2))
            print(f"{name} ({setting}): {row['status']}" + (f", training {row.get('train_wall_s')} s wall"
                                                            if row["status"] == "ok" else f": {row.get('error')}"),
                  flush=True)
            return row

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, todo))
    table = markdown(args, load_rows(args, algorithms), algorithms, available)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
        print(f"wrote {args.markdown}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
