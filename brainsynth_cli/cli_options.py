"""Old option spellings that keep working without being shown in ``--help``.

Only typer is imported here (``brainsynth --help`` stays fast).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand


def hidden_aliases(**aliases: str) -> type[TyperCommand]:
    """A command class that also accepts old option spellings, not shown in ``--help``:
    ``@app.command("make-pairs", cls=hidden_aliases(out="--output"))`` makes ``--out X`` (and
    ``--out=X``) mean ``--output X``. Keys are the old long names without the dashes."""
    table = {f"--{old.replace('_', '-')}": new for old, new in aliases.items()}

    class AliasedCommand(TyperCommand):
        def make_parser(self, ctx: Any) -> Any:
            parser = super().make_parser(ctx)
            for old, new in table.items():
                param = next((p for p in self.get_params(ctx) if getattr(p, "param_type_name", "") == "option" and new in p.opts), None)
                if param is None or param.is_flag or param.count:
                    raise TypeError(f"{self.name}: hidden alias {old} names no value option {new}")
                # the parser is the only place that knows option names: help is drawn from param.opts
                parser.add_option(obj=param, opts=[old], dest=param.name,
                                  action="append" if param.multiple else "store", nargs=param.nargs)
            return parser

    return AliasedCommand
