"""Option definitions shared by the commands (declared once, reused), and the small adapters
from option text to library calls that several command groups use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="Model preset (see `stepvar models`).", envvar="STEPVAR_MODEL")]
WeightsOpt = Annotated[Optional[Path], typer.Option(help="Local transformer weights (.pth, .safetensors or a sharded directory); for toy, another export directory of it.")]
VaeOpt = Annotated[Optional[Path], typer.Option(help="Local VAE weights (.pth with a 'vae' key).")]
TextEncOpt = Annotated[Optional[Path], typer.Option("--text-encoder", help="Local flan-t5-xl directory (needs stepvar\\[t5]).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.", envvar="STEPVAR_DEVICE")]
DtypeOpt = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")]
NumericsOpt = Annotated[str, typer.Option(help="exact (fp32 stays fp32; default) or official: the official code's bf16 "
                                               "roundings in an fp32 run, to compare with it bit for bit.")]
ResOpt = Annotated[Optional[int], typer.Option("--resolution", "-r", help="256, 512, 768, 1024 or 2048 (default: the model's own).")]
AspectOpt = Annotated[Optional[str], typer.Option(help="Aspect ratio W:H (e.g. 1:1, 4:3) or h/w; snapped to the nearest template.")]
SizeOpt = Annotated[Optional[str], typer.Option(help="WIDTHxHEIGHT in pixels, snapped to the nearest schedule.")]
SeedOpt = Annotated[int, typer.Option(help="Sampler seed.")]
CfgOpt = Annotated[Optional[str], typer.Option(help="CFG scale, or one per scale as a comma list. 1 disables CFG. [default: the model preset's, else 3]")]
TauOpt = Annotated[Optional[str], typer.Option(help="Sampling temperature, or one per scale as a comma list. [default: the model preset's, else 0.5]")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Top-p on each bit. [default: the model preset's, else 0.97]")]
MethodOpt = Annotated[Optional[str], typer.Option(help="Pruning method (see `stepvar methods`); default: dense, or the recommended preset when --keep, --keep-per-scale or --first-scale is given.")]
KeepOpt = Annotated[Optional[float], typer.Option(help="Keep ratio of the pruned scales, in (0, 1]; default: the method preset's.")]
KeepTableOpt = Annotated[Optional[str], typer.Option("--keep-per-scale", help="Per-scale keep ratios, e.g. 9:0.6,10:0.5.")]
FirstScaleOpt = Annotated[Optional[int], typer.Option("--first-scale", help="Prune this scale index and all later ones.")]
CfgDropOpt = Annotated[Optional[int], typer.Option(
    "--cfg-drop-from", help="Run the unconditional guidance row only before this scale index (negative counts from "
                            "the end); from it on only the conditional row runs. Any method.")]
SkipLastOpt = Annotated[Optional[int], typer.Option(
    "--skip-last", help="Do not run the last N scales: the codes accumulated before them are decoded. Any method.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON record on stdout (for scripts).")]

ResListOpt = Annotated[Optional[str], typer.Option(
    "--resolution", "-r", help="256, 512, 768, 1024, 2048, or a comma list (e.g. 256,512,1024); default: the model's own.")]
MethodsOpt = Annotated[str, typer.Option(
    help="Comma list of methods (see `stepvar methods`); name@KEEP pins a keep, name:key=value sets options. "
         "dense is always run: speedups are against it.")]
KeepListOpt = Annotated[Optional[str], typer.Option(
    "--keep", help="Keep ratio(s), comma list, for methods whose preset has a keep (stepvar and ablations); "
                   "fastvar/fastvar-skip run at their release ratios unless written fastvar@0.4.")]
PromptOpt = Annotated[str, typer.Option("--prompt", "-p", help="Prompt used for every run.")]

# Training
RunDirOpt = Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint.pt, log.jsonl, config.json).")]
StepsOpt = Annotated[int, typer.Option(help="Total updates; a resumed run continues up to this count.")]
ResumeOpt = Annotated[bool, typer.Option(help="Resume from the run directory's checkpoint.")]
TrainSeedOpt = Annotated[int, typer.Option(help="Seed for data, init and dropout: a run is reproducible from it.")]
TrainBatchOpt = Annotated[int, typer.Option(help="Images per update.")]
TrainDeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
CkptEveryOpt = Annotated[int, typer.Option(help="Write the checkpoint every this many updates (and at the end).")]
CpuBf16Opt = Annotated[bool, typer.Option("--cpu-bf16", help="bf16 autocast on a CPU with native bf16 (AVX512-BF16/AMX); refused on other CPUs.")]
LROpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default: the config's).")]
WarmupOpt = Annotated[Optional[int], typer.Option(help="Linear warm-up updates (default: the config's).")]
DecayOpt = Annotated[Optional[int], typer.Option("--decay-steps", help="Cosine horizon; default --steps, so the LR reaches its floor at the end.")]


def make_method(method: str | None, keep: float | None, keep_per_scale: str | None, first_scale: int | None,
                method_file: Path | None = None, cfg_drop_from: int | None = None, skip_last: int | None = None):
    """The pruner the method options describe (the library maps them; this only parses the table).
    A --method-file preset replaces --method."""
    from stepvar.options import parse_keep_table
    from stepvar.pruning.registry import method_preset_file, pruner_from_settings

    preset = None
    if method_file is not None:
        method, preset = method_preset_file(method_file)
    return pruner_from_settings(method, keep, parse_keep_table(keep_per_scale), first_scale, preset, cfg_drop_from,
                                skip_last)


def accelerated_methods(methods: list[str], cfg_drop_from: int | None, skip_last: int | None) -> list[str]:
    """--cfg-drop-from / --skip-last of bench and compare: written into every listed method as a variant
    (dense too, as `dense:skip_last=1`); the plain dense reference still runs for the speedups."""
    from stepvar.pruning.registry import with_accelerations

    return [with_accelerations(m, cfg_drop_from, skip_last) for m in methods]


def sampling_options(model: str | None, cfg: str | None, tau: str | None, top_p: float | None, seed: int | None):
    """SamplingConfig from the command line, falling back to the model preset's sampling defaults."""
    from stepvar.options import parse_float_list
    from stepvar.sampling import SamplingConfig

    return SamplingConfig.for_preset(model, parse_float_list(cfg, "cfg"), parse_float_list(tau, "tau"), top_p, seed)
