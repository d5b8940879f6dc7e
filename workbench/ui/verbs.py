"""The core verbs of the ``workbench`` command line: models, zoo, harvest-shards, runs, sweep (:mod:`workbench.ui.sweep`),
demo, app."""

from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

from workbench.ui.output import emit


def _json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object last")


def cmd_models(args: argparse.Namespace) -> int:
    from workbench.models import list_models

    cards = [c.to_dict() for c in list_models()]
    lines = [f"{'name':<22} {'params':>8}  {'cached':<6} architecture"]
    for c in cards:
        steps = f" (steps {c['checkpoints'][0]}..{c['checkpoints'][-1]}, {len(c['checkpoints'])} saved)" if c["checkpoints"] else ""
        lines.append(f"{c['name']:<22} {c['parameters']:>8}  {'yes' if c['cached'] else 'no':<6} {c['architecture']}{steps}")
    emit(args, {"models": cards}, "\n".join(lines))
    return 0


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from workbench import zoo

    targets = zoo.targets(args.name) if args.name else zoo.names()
    built = {}
    for name in targets:
        folder = zoo.build(name, progress=not args.quiet, force=args.force)
        info = zoo.manifest(name)
        built[name] = {"folder": str(folder), "steps": info["steps"], "report": info.get("report", {})}
    text = "\n".join(f"toy/{n}: {v['folder']} ({len(v['steps'])} checkpoints)" for n, v in built.items())
    emit(args, {"built": built}, text)
    return 0


def cmd_zoo_list(args: argparse.Namespace) -> int:
    from workbench import zoo

    rows = {n: {"built": zoo.is_built(n), "steps": zoo.checkpoint_steps(n) if zoo.is_built(n) else []} for n in zoo.names()}
    emit(args, {"zoo": rows, "families": zoo.all_families()},
         "\n".join(f"toy/{n}: {'built' if r['built'] else 'not built'}" for n, r in rows.items()))
    return 0


def cmd_harvest_shards(args: argparse.Namespace) -> int:
    from circuits.dictionaries.shard_runs import harvest_command
    from workbench.ui.device import check_device

    check_device(args.device)
    payload, text = harvest_command(args)
    emit(args, payload, text)
    return 0


def _integer(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from exc
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value
    return parse


def cmd_runs(args: argparse.Namespace) -> int:
    from workbench.store import Store

    runs = Store().list(kind=args.kind, model=args.model)
    rows = [
        {"kind": r.kind, "run_id": r.run_id, "model": r.model, "status": r.status, "created": r.created,
         "path": str(r.path), "error": r.error}
        for r in runs
    ]
    lines = [f"{r['kind']:<16} {r['run_id']:<28} {r['model'] or '-':<20} {r['status']}" for r in rows] or ["no runs stored"]
    emit(args, {"runs": rows}, "\n".join(lines))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from workbench.ui.demo import run_demos, status_path
    from workbench.ui.device import check_device

    check_device(args.device)
    done = run_demos(device=args.device, force=args.force, progress=not args.quiet, status=status_path())
    emit(args, {"demos": done}, "\n".join(f"{d['kind']}: {d['status']} ({d.get('path') or d.get('error', '')})" for d in done))
    return 1 if any(d["status"] == "failed" for d in done) else 0


def app_dir() -> Path:
    """The checkout's ``app/`` folder (the dashboard is run from the checkout)."""
    folder = Path(__file__).resolve().parents[2] / "app"
    if not (folder / "Home.py").is_file():
        raise FileNotFoundError(f"the dashboard lives in the checkout's app/ folder; {folder / 'Home.py'} not found")
    return folder


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}") from exc
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {port}")
    return port


def is_loopback(host: str) -> bool:
    """True for localhost and addresses in 127.0.0.0/8 or ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_app(args: argparse.Namespace) -> int:
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app_dir() / "Home.py"),
        "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
    ]
    if not is_loopback(args.host):
        print(f"warning: serving on {args.host}, not loopback: anyone who reaches this address can read the run store "
              "and start analyses from the Home page", file=sys.stderr, flush=True)
    print(f"Serving the dashboard on http://{args.host}:{args.port}", flush=True)
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    demos = None
    if args.demos:  # serve first; the demos land in the store while the page is up (the Home page shows them)
        from workbench.ui.demo import status_path

        log = status_path().with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as out:
            demos = subprocess.Popen([sys.executable, "-m", "workbench.ui.cli", "demo", "--json"], stdout=out,
                                     stderr=subprocess.STDOUT, env=env)
        print(f"Computing the missing demo runs in the background (log: {log})", flush=True)
    try:
        return subprocess.call(cmd, env=env)
    finally:
        if demos is not None and demos.poll() is None:
            demos.terminate()


def register(sub: argparse._SubParsersAction) -> None:
    """Add the core verbs (models, zoo, harvest-shards, runs, sweep, demo, app) to the ``workbench`` parser."""
    p = sub.add_parser("models", help="list the models available offline (model cards)")
    _json_arg(p)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("zoo", help="the project's own small models")
    zsub = p.add_subparsers(dest="zoo_verb", required=True, metavar="<zoo verb>")
    b = zsub.add_parser("build", help="train zoo models (all, a FAMILY or a member NAME), resuming an interrupted build")
    b.add_argument("name", nargs="?", help="family (llama, gpt, vit) or member name, e.g. induction-2l (default: all)")
    b.add_argument("--force", action="store_true", help="retrain from scratch")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    _json_arg(b)
    b.set_defaults(func=cmd_zoo_build)
    b = zsub.add_parser("list", help="list zoo members and whether they are built")
    _json_arg(b)
    b.set_defaults(func=cmd_zoo_list)

    p = sub.add_parser("harvest-shards", help="write a model's activations at hooks to safetensors shards on disk "
                       "(resumes an interrupted write); train on them with train-dict --shards")
    p.add_argument("--model", default="smollm2-135m", help="model spec (default smollm2-135m; see `workbench models`)")
    p.add_argument("--hooks", nargs="+", required=True, help="hook names (space or comma separated), all harvested in "
                   "the same forwards, e.g. blocks.6.ln2.hook_normalized blocks.6.hook_mlp_out")
    p.add_argument("--out", required=True, help="the shard folder (new, empty, or an interrupted write to resume)")
    p.add_argument("--tokens", type=_integer(1), default=1_000_000, help="real tokens to write (default 1000000)")
    p.add_argument("--shard-rows", type=_integer(1), default=65_536, help="rows (tokens) per shard (default 65536)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="storage dtype (default float32)")
    p.add_argument("--corpus", default="wiki", help="corpus name (workbench.data.CORPORA; default wiki)")
    p.add_argument("--split", default="train", choices=("train", "heldout"), help="corpus split (default train)")
    p.add_argument("--seq-len", type=_integer(1), default=128, help="tokens per row, BOS included (default 128)")
    p.add_argument("--batch-size", type=_integer(1), default=8, help="rows per forward pass (default 8)")
    p.add_argument("--seed", type=_integer(0), default=0, help="seed of the corpus order (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda when present)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _json_arg(p)
    p.set_defaults(func=cmd_harvest_shards)

    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--kind", help="only runs of this kind")
    p.add_argument("--model", help="only runs of this model")
    _json_arg(p)
    p.set_defaults(func=cmd_runs)

    from workbench.ui.sweep import register as register_sweep

    register_sweep(sub)

    p = sub.add_parser("demo", help="compute the demo run of every analysis (skipping stored ones)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--force", action="store_true", help="recompute even if stored")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _json_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("app", help="serve the Streamlit dashboard")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; another address warns)")
    p.add_argument("--port", type=_port, default=8501, help="port 1-65535 (default 8501)")
    p.add_argument("--demos", action="store_true",
                   help="compute the missing demo runs in the background while serving (`make app` does)")
    p.set_defaults(func=cmd_app)
