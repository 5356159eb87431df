"""Where a grafted student loses its teacher's picture: its front, its trunk or its back swapped for the teacher's.

A student around its teacher's residual trunk (``edge_net`` with ``init: teacher_trunk``) has three parts: the
front (everything before the trunk), the trunk, and the back (everything after it). Each row hands one or two of
them to the teacher, through the trunk's ends (``Family.trunk_ends``: the student's trunk fed the teacher's
trunk input, its back fed the teacher's trunk output, or the other way round), and grades the picture by the
perceptual judge against the teacher's own, calibrated on the teacher style by style (held-out photos, 512 px,
torch fp32). How far each swap comes nearer says which end a better student must change; a row with the
teacher's front and trunk measures the student's back alone.

    styleslim run recipes/multistyle26_edge.yaml
    python benchmarks/bench_student_ends.py --student runs/multistyle26_edge/distilled --styles 0 3 9 16 19
    python benchmarks/bench_student_ends.py --student runs/multistyle_edge/distilled --styles 19   # one style
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.bench_edge import judged_reference, peer_path, square
from compressor.data import sample_content_paths
from compressor.fidelity import DISTANCES, judge_info, judge_outputs
from compressor.io import write_json
from compressor.models import get_family, load_any, load_model
from compressor.models.conditional_norm import parse_style_weights
from compressor.models.edge_net import module_inputs

RESULTS = Path(__file__).parent / "results"
DEFAULT_STUDENT = Path("runs/multistyle26_edge/distilled")
DEFAULT_STYLES = ["0", "3", "9", "16", "19"]
THREADS = 2
# row -> (whose parts run: the network that runs, the one whose inner tensors it is fed, and which: 0 = the
# trunk's input, 1 = its output)
SWAPS: dict[str, tuple[str, str, int] | None] = {
    "student": None,
    "teacher's front": ("student", "teacher", 0),
    "teacher's front and trunk (the student's back alone)": ("student", "teacher", 1),
    "teacher's back": ("teacher", "student", 1),
    "teacher's trunk and back (the student's front alone)": ("teacher", "student", 0),
}


@contextmanager
def fed(module: nn.Module, tensor: torch.Tensor) -> Iterator[None]:
    """``module`` takes ``tensor`` in place of its first input while the block runs."""
    hook = module.register_forward_pre_hook(lambda _, args: (tensor, *args[1:]))
    try:
        yield
    finally:
        hook.remove()


def trunk_tensors(model: nn.Module, run: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
    """The inputs of ``model``'s trunk ends (the trunk's input and output) during ``run()``."""
    with module_inputs(get_family(model).trunk_ends(model)) as seen:
        run()
    return seen


def run(quick: bool, student_dir: Path = DEFAULT_STUDENT, styles: list[str] | None = None) -> dict:
    """``quick``: 256 px, the first style only (a pipeline check); else 512 px."""
    if not (student_dir / "spec.json").is_file():
        return {"table": [], "skipped": f"no trained student at {student_dir}; run `styleslim run "
                "recipes/multistyle26_edge.yaml` or pass --student"}
    styles = styles or DEFAULT_STYLES
    size, styles = (256, styles[:1]) if quick else (512, styles)
    torch.set_num_threads(THREADS)
    student = load_model(student_dir).eval()
    teacher = load_any(peer_path()).eval()
    photos = {p.name: square(p, size) for p in sample_content_paths("eval")}
    images = [torch.from_numpy(x) for x in photos.values()]
    n_styles = get_family(student).n_styles(student)
    models = {"teacher": teacher, "student": student}
    per_style: dict[str, list[dict]] = {row: [] for row in SWAPS}
    with torch.no_grad():
        for style in styles:
            weights = parse_style_weights(style, get_family(teacher).n_styles(teacher))
            nets = {"teacher": lambda x, w=weights: teacher(x, w),
                    "student": (lambda x, w=weights: student(x, w)) if n_styles > 1 else
                    (lambda x: student(x))}
            reference = judged_reference(nets["teacher"], photos)
            # each network's trunk input and output per photo, once: what the swaps feed the other one
            inner = {name: [trunk_tensors(models[name], lambda x=x, name=name: nets[name](x)) for x in images]
                     for name in models}
            for row, swap in SWAPS.items():
                outputs = []
                for k, x in enumerate(images):
                    if swap is None:
                        outputs.append(nets["student"](x))
                        continue
                    runs, donor, end = swap
                    with fed(get_family(models[runs]).trunk_ends(models[runs])[end], inner[donor][k][end]):
                        outputs.append(nets[runs](x))
                judged = judge_outputs(outputs, reference["embeddings"], reference["calibration"])
                shift = reference["calibration"]["shift"]
                band = reference["calibration"]["band"]
                per_style[row].append({"style": style, "grade": judged["grade"],
                                       **{f"{d}_bands": round(judged[f"{d}_bands"], 2) for d in DISTANCES},
                                       **{f"shift_{d}_bands": round(shift[d] / band[d], 2) for d in DISTANCES}})
    table = [{"row": row, **{f"mean_{d}_bands": round(float(np.mean([p[f"{d}_bands"] for p in items])), 2)
                             for d in DISTANCES}, "per_style": items} for row, items in per_style.items()]
    return {"student": str(student_dir), "teacher": peer_path().name, "size": size, "threads": THREADS,
            "styles": styles, "table": table, "judge": judge_info(),
            "note": "torch fp32; bands of the teacher's same-picture variation per style (close: within shift_*)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", type=Path, default=DEFAULT_STUDENT,
                        help="a student's model folder (init: teacher_trunk)")
    parser.add_argument("--styles", nargs="+", default=DEFAULT_STYLES, help="styles of multistyle26.onnx to judge "
                        "under (a one-style student: the one it learnt)")
    parser.add_argument("--quick", action="store_true", help="256 px, the first style")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_student_ends.json")
    args = parser.parse_args()
    result = run(args.quick, args.student, args.styles)
    write_json(args.out, result)
    if "skipped" in result:
        print(result["skipped"])
    for row in result["table"]:
        print(f"{row['row']:55s} " + " / ".join(str(row[f"mean_{d}_bands"]) for d in DISTANCES))


if __name__ == "__main__":
    main()
