"""``brainsynth plugins``: what is loaded, what failed, what each plugin provides and needs."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins(
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """List plugins: name, version, source, what each registers per kind, what it requires
        (and whether that is present), and the plugins that failed or are blocked, with reasons."""
        from brainsynth_cli.plugin_manager import get_manager

        report = get_manager().report()
        if as_json:
            import json

            typer.echo(json.dumps({"plugins": report}, indent=2))
            return
        _print_table(report)


def _print_table(report: list[dict]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(soft_wrap=False, width=None if typer.get_text_stream("stdout").isatty() else 160)
    table = Table(title="brainsynth plugins", show_lines=False)
    for col in ("plugin", "version", "source", "status", "provides", "requires"):
        table.add_column(col)
    for rec in report:
        provides = "\n".join(f"{kind}: {', '.join(names) or '-'}" for kind, names in rec["provides"].items())
        requires = "\n".join(
            f"{'ok' if r['present'] else 'MISSING'} {r['kind']} {r['name']}" + ("" if r["present"] else f" ({r['hint']})")
            for r in rec["requires"]
        )
        status = rec["status"] if not rec["error"] else f"{rec['status']}: {rec['error']}"
        if rec["problems"]:
            status += "\n" + "\n".join(rec["problems"])
        cells = (rec["name"], rec["version"] or "?", rec["source"], status, provides or "-", requires or "-")
        table.add_row(*(escape(c) for c in cells))
    if not report:
        console.print("no plugins loaded")
        return
    console.print(table)
