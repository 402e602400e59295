"""Built-in plugin ``simulate``: ``brainsynth simulate``, a longitudinal cohort with known ground
truth, from the MNI152 2009a template that nilearn ships.

Only the command's description here; the simulator lives in
:mod:`brainsynth_plugins.simulate.cohort` (Python API: ``simulate_cohort``,
``simulate_subject``) and the reference anatomy in :mod:`brainsynth_plugins.simulate.template`
(``reference(resolution)``); both are imported when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import typer

from brainsynth_cli.hookspecs import hookimpl


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        output: Path = typer.Option(..., "-o", "--output", help="Output folder (created; a folder holding the same simulation is resumed)."),
        subjects: int = typer.Option(4, "--subjects", "-n", help="Number of subjects (>= 1)."),
        sessions: int = typer.Option(3, "--sessions", "-m", help="Sessions per subject (>= 2); the first is the baseline."),
        resolution: float = typer.Option(2.0, "--resolution", "-r", help="Voxel size in mm: 1, 2, 3 or 4."),
        seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same files."),
        ventricle_rate: Tuple[float, float] = typer.Option(
            (2.0, 8.0), "--ventricle-rate", metavar="LOW HIGH",
            help="Range of lateral-ventricle volume change, percent per year, drawn per subject."),
        cortex_rate: Tuple[float, float] = typer.Option(
            (-2.5, -0.5), "--cortex-rate", metavar="LOW HIGH",
            help="Range of cerebral-cortex volume change, percent per year, drawn per subject."),
        interval_years: Tuple[float, float] = typer.Option(
            (1.0, 2.0), "--interval-years", metavar="LOW HIGH", help="Range of years between sessions."),
        noise: float = typer.Option(1.0, "--noise", help="Noise scale: 1 = Rician noise of 1-3 % of white matter, 0 = none."),
        skull: bool = typer.Option(True, "--skull/--no-skull", help="Draw a synthetic skull and scalp around the brain (the template is skull-stripped)."),
    ) -> None:
        """Simulate a longitudinal T1w cohort with exact ground truth (BIDS tree + truth labels).

        Subjects: the MNI152 2009a template, randomly deformed, with own contrast, bias, noise.

        Later sessions: ventricles enlarge outward and the cortex thins from the pial side.

        Change rates measured on the written labels match the requested ones within 1 pp.

        Subjects cycle through three patterns: both change, ventricles only, cortex only.
        """
        from brainsynth_cli.progress import progress_bar
        from brainsynth_plugins.simulate.cohort import simulate_cohort

        with progress_bar("simulate", total=subjects) as progress:
            result = simulate_cohort(
                output, subjects=subjects, sessions=sessions, resolution=resolution, seed=seed,
                ventricle_rate=ventricle_rate, cortex_rate=cortex_rate, interval_years=interval_years,
                noise=noise, skull=skull, progress=progress,
            )
        for plan in result.plans:
            rates = "  ".join(
                f"{n} " + "/".join(f"{r[n]:+.1f}%" for r in plan.requested[1:]) for n in ("ventricle", "cortex")
            )
            typer.echo(f"{plan.subject}  {plan.sex} {plan.age:g}y  {plan.pattern:<9}  {rates}")
        kept = f", {len(result.skipped)} already there" if result.skipped else ""
        typer.echo(
            f"wrote {len(result.simulated)} subject(s){kept} x {result.options.sessions} sessions at "
            f"{result.options.resolution:g} mm to {result.root} in {result.seconds:.1f} s; "
            f"truth labels in {result.truth_dir}"
        )
