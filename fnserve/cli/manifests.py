"""Offline manifest commands, no router needed: ``validate`` (Function or TrainingJob), ``schema`` (the
JSON Schema of a kind) and ``render`` (the Kubernetes objects a manifest becomes in a cluster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fnserve.cli.base import CliError
from fnserve.cli.output import print_json
from fnserve.manifest import KINDS, ManifestError, json_schema, load_manifest, manifest_path
from fnserve.settings import Settings


def cmd_validate(args: argparse.Namespace) -> None:
    failed = False
    for path in args.paths:
        try:
            manifest = load_manifest(path)
            print(f"{manifest_path(path)}: ok ({manifest.kind} {manifest.name})")
        except ManifestError as exc:
            failed = True
            print("\n".join(exc.lines()), file=sys.stderr)
    if failed:
        raise SystemExit(1)


def cmd_schema(args: argparse.Namespace) -> None:
    print_json(json_schema(args.kind))


def cmd_render(args: argparse.Namespace) -> None:
    import yaml

    from fnserve.backends.knative.folders import render_path
    from fnserve.backends.knative.render import ClusterConfig, RenderError, config_from_settings

    config = ClusterConfig() if args.defaults else config_from_settings(Settings.from_env())
    if args.namespace:
        from dataclasses import replace

        config = replace(config, namespace=args.namespace)
    for path in args.paths:
        try:
            objects, notes = render_path(path, config, jobsink=not args.plain_job)
        except RenderError as exc:
            raise CliError(f"{path}: {exc}") from None
        for note in notes:
            print(f"fnserve: note: {note}", file=sys.stderr)
        if args.output is None:
            print(yaml.safe_dump_all(objects, sort_keys=False), end="---\n" if path != args.paths[-1] else "")
            continue
        args.output.mkdir(parents=True, exist_ok=True)
        for body in objects:
            target = args.output / _object_file(body)
            target.write_text(yaml.safe_dump(body, sort_keys=False))
            print(target)


def _object_file(body: dict[str, Any]) -> str:
    """<name>.<kind>.yaml; a code ConfigMap's name ends in a content digest, which the file name omits so
    that a changed function overwrites its file instead of adding one."""
    name, kind = body["metadata"]["name"], body["kind"].lower()
    return f"{name.rsplit('-', 1)[0] if kind == 'configmap' else name}.{kind}.yaml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """render, validate, schema."""
    render = sub.add_parser("render", help="print (or write) the Kubernetes objects a manifest becomes in a cluster")
    render.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="a function folder, function.yaml or train.yaml")
    render.add_argument("-o", "--output", type=Path, metavar="DIR", help="write one file per object into DIR")
    render.add_argument("--namespace", help="default: $FNSERVE_CLUSTER_NAMESPACE or fnserve")
    render.add_argument("--plain-job", action="store_true", help="a TrainingJob as one batch/v1 Job, not a JobSink")
    render.add_argument("--defaults", action="store_true",
                        help="ignore FNSERVE_* cluster settings (how manifests/examples is rendered)")
    render.set_defaults(run=cmd_render)

    validate = sub.add_parser("validate", help="check manifests (Function or TrainingJob) without using them")
    validate.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    validate.set_defaults(run=cmd_validate)

    schema = sub.add_parser("schema", help="print the JSON Schema of a manifest kind")
    schema.add_argument("--kind", choices=list(KINDS), default="Function")
    schema.set_defaults(run=cmd_schema)
