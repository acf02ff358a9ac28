"""Offline manifest commands, no router needed: ``validate`` (Function or TrainingJob), ``schema`` (the
JSON Schema of a kind) and ``render`` (the Kubernetes objects a manifest becomes in a cluster).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fnserve.cli.base import ERROR, CliError, Commands, add_command
from fnserve.cli.output import error_document, print_json
from fnserve.manifest import KINDS, ManifestError, json_schema, load_manifest, manifest_path
from fnserve.settings import Settings


def cmd_validate(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    for path in args.paths:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            results.append({"file": exc.source, "ok": False,
                            "problems": [{"path": p.path, "message": p.message} for p in exc.problems]})
            if not args.json:
                print("\n".join(exc.lines()), file=sys.stderr)
            continue
        results.append({"file": str(manifest_path(path)), "ok": True, "kind": manifest.kind, "name": manifest.name})
        if not args.json:
            print(f"{manifest_path(path)}: ok ({manifest.kind} {manifest.name})")
    failed = sum(not r["ok"] for r in results)
    if args.json:
        print_json(error_document(f"{failed} of {len(results)} manifests are invalid", ERROR, results=results)
                   if failed else {"results": results})
    if failed:
        raise SystemExit(ERROR)


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
    rendered: list[dict[str, Any]] = []
    written: list[str] = []
    for path in args.paths:
        try:
            objects, notes = render_path(path, config, jobsink=not args.plain_job)
        except RenderError as exc:
            raise CliError(f"{path}: {exc}") from None
        for note in notes:
            print(f"fnserve: note: {note}", file=sys.stderr)
        if args.json and args.output is None:
            rendered.extend(objects)
            continue
        if args.output is None:
            print(yaml.safe_dump_all(objects, sort_keys=False), end="---\n" if path != args.paths[-1] else "")
            continue
        args.output.mkdir(parents=True, exist_ok=True)
        for body in objects:
            target = args.output / _object_file(body)
            target.write_text(yaml.safe_dump(body, sort_keys=False))
            written.append(str(target))
            if not args.json:
                print(target)
    if args.json:
        print_json({"files": written} if args.output is not None else {"objects": rendered})


def _object_file(body: dict[str, Any]) -> str:
    """<name>.<kind>.yaml; a code ConfigMap's name ends in a content digest, which the file name omits so
    that a changed function overwrites its file instead of adding one."""
    name, kind = body["metadata"]["name"], body["kind"].lower()
    return f"{name.rsplit('-', 1)[0] if kind == 'configmap' else name}.{kind}.yaml"


def register(sub: Commands, offline: argparse.ArgumentParser) -> None:
    """render, validate, schema."""
    render = add_command(
        sub, "render", "print (or write) the Kubernetes objects a manifest becomes in a cluster",
        "Render a Function or TrainingJob as the Kubernetes objects `fnserve up --backend knative` applies:\n"
        "the code ConfigMap and the KServe InferenceService, or a JobSink (or batch Job). No router needed.\n"
        "YAML documents on stdout, one file per object with -o, or with --json {\"objects\": [...]}.",
        ["fnserve render functions/sentiment", "fnserve render functions/sentiment/train.yaml --plain-job",
         "fnserve render --defaults functions/iris -o manifests/examples/iris"],
        [offline])
    render.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                        help="a function folder, function.yaml or train.yaml")
    render.add_argument("-o", "--output", type=Path, metavar="DIR", help="write one file per object into DIR")
    render.add_argument("--namespace", help="default: $FNSERVE_CLUSTER_NAMESPACE or fnserve")
    render.add_argument("--plain-job", action="store_true", help="a TrainingJob as one batch/v1 Job, not a JobSink")
    render.add_argument("--defaults", action="store_true",
                        help="ignore FNSERVE_* cluster settings (how manifests/examples is rendered)")
    render.set_defaults(run=cmd_render)

    validate = add_command(
        sub, "validate", "check manifests (Function or TrainingJob) without using them",
        "Check manifests offline: every problem of every file, each as `file: field.path: what was expected`.\n"
        "A folder means its function.yaml. With --json: {\"results\": [{\"file\", \"ok\", ...}]}.",
        ["fnserve validate functions/sentiment", "fnserve validate functions/*/function.yaml functions/*/train.yaml",
         "fnserve validate fn/function.yaml --json"],
        [offline])
    validate.add_argument("paths", type=Path, nargs="+", metavar="PATH")
    validate.set_defaults(run=cmd_validate)

    schema = add_command(
        sub, "schema", "print the JSON Schema of a manifest kind",
        "Print the JSON Schema of a manifest kind (the same as schemas/*.json in the repository), for editors:\n"
        "a `# yaml-language-server: $schema=PATH` first line in a manifest gives completion and checks in any\n"
        "editor with the YAML language server. Rules JSON Schema cannot express are in its description.",
        ["fnserve schema > function.schema.json", "fnserve schema --kind TrainingJob | head"],
        [offline])
    schema.add_argument("--kind", choices=list(KINDS), default="Function")
    schema.set_defaults(run=cmd_schema)
