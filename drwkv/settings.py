"""The settings a generated PNG carries, and the command that makes it again: one schema for
``drwkv-infer`` and the C++ ``drwkv_generate`` (cpp/runtime, which writes the same keys).

Two kinds of text chunk (``drwkv.png`` writes them):
- ``drwkv.*``: one value each, what ``--info`` reads back: model, artifact (file name), backend,
  sampler, steps, eta, cfg_scale, clip_x0, seed, batch_size, and when given vae_decoder, vae_tile,
  vae_tile_overlap, and precision when it is not fp32 (bf16 and int8 change the pixels). A grid adds
  classes (names), labels (indices, conditional models), first_image, num_images and nrow; one image
  of a folder adds index, class and label.
- ``parameters``: one line of "Name: value" pairs as image viewers show it (``drwkv.png.parameters_line``).
"""
from drwkv.png import parameters_line

#: The command-line flag of each backend name a PNG records.
BACKEND_FLAGS = {"tensorrt": "--engine", "onnxruntime": "--onnx", "openvino": "--onnx", "torch": "--ckpt"}
#: Settings that are whole numbers (checked when read back).
INT_SETTINGS = ("drwkv.steps", "drwkv.seed", "drwkv.batch_size", "drwkv.first_image", "drwkv.num_images",
                "drwkv.nrow", "drwkv.index", "drwkv.label", "drwkv.vae_tile", "drwkv.vae_tile_overlap")


class RunSettings:
    """What one run was made with; ``grid_text`` and ``image_text`` give the PNG chunks of its outputs.

    size: (width, height) of one image; class_names: the model's (may be empty); conditional: whether
    the model takes classes (its PNGs then record labels and a Class field)."""

    def __init__(self, software, model, artifact, backend, sampler, steps, eta, cfg_scale, clip_x0, seed, batch_size,
                 size, class_names=(), conditional=True, vae_decoder=None, vae_tile=None, vae_tile_overlap=None,
                 precision="fp32"):
        self.software, self.model, self.artifact, self.backend = software, model, artifact, backend
        self.sampler, self.steps, self.eta, self.cfg_scale, self.clip_x0 = sampler, steps, eta, cfg_scale, clip_x0
        self.seed, self.batch_size, self.size = seed, batch_size, size
        self.class_names, self.conditional = list(class_names), conditional
        self.vae = {"vae_decoder": vae_decoder, "vae_tile": vae_tile, "vae_tile_overlap": vae_tile_overlap}
        self.precision = precision

    def class_name(self, label):
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def common(self):
        text = {"Software": self.software, "drwkv.model": self.model, "drwkv.artifact": self.artifact,
                "drwkv.backend": self.backend, "drwkv.sampler": self.sampler, "drwkv.steps": self.steps,
                "drwkv.eta": self.eta, "drwkv.cfg_scale": self.cfg_scale, "drwkv.clip_x0": self.clip_x0,
                "drwkv.seed": self.seed, "drwkv.batch_size": self.batch_size}
        # tiles change a latent model's pixels, so they are part of what makes the image
        text.update({f"drwkv.{key}": value for key, value in self.vae.items() if value is not None})
        if self.precision != "fp32":
            text["drwkv.precision"] = self.precision
        return text

    def parameters(self, classes):
        """The ``parameters`` line; Size is that of one image, also in a grid."""
        fields = [("Steps", self.steps), ("Sampler", self.sampler)] + (
            [("Eta", self.eta)] if self.sampler == "ddim" else [])
        fields += [("CFG scale", self.cfg_scale), ("Seed", self.seed), ("Size", f"{self.size[0]}x{self.size[1]}"),
                   ("Model", self.model), ("Backend", self.backend), ("Artifact", self.artifact)]
        return parameters_line(fields + ([("Class", classes)] if self.conditional else []) + [("Clip x0", self.clip_x0)])

    def grid_text(self, labels, first_image, nrow):
        names = ",".join(self.class_name(int(c)) for c in labels)
        text = {**self.common(), "drwkv.classes": names, "drwkv.first_image": first_image,
                "drwkv.num_images": len(labels), "drwkv.nrow": nrow}
        if self.conditional:
            text["drwkv.labels"] = ",".join(str(int(c)) for c in labels)
        text["parameters"] = f"{self.parameters(names)}, Images: {len(labels)}, First image: {first_image}"
        return text

    def image_text(self, index, label):
        name = self.class_name(int(label))
        text = {**self.common(), "drwkv.index": index, "drwkv.class": name}
        if self.conditional:
            text["drwkv.label"] = int(label)
        text["parameters"] = f"{self.parameters(name)}, Image: {index}"
        return text

    def image_file_name(self, index, label):
        """The file name of one image in a folder: 0007_sneaker.png."""
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in self.class_name(int(label)))
        return f"{index:04d}_{safe}.png"


def printable(text):
    """``text`` with control characters (ESC, BEL, newlines...) shown as escapes: a PNG's text is
    untrusted and must not drive the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def regenerate_command(text):
    """The drwkv-infer arguments that make an image again from its drwkv.* text chunks (its artifact by
    file name, written to regenerated.png or the directory regenerated/); ValueError (one line) if they
    are missing or not what drwkv-infer writes."""
    for key, value in text.items():
        if key.startswith("drwkv.") and not value.isprintable():
            raise ValueError(f"the image's setting {key} holds control characters ({printable(value)[:80]}): "
                             f"not written by drwkv-infer")
    for key in INT_SETTINGS:
        if key in text and not text[key].isdigit():
            raise ValueError(f"the image's setting {key} is not a whole number: {text[key][:80]!r}")
    try:
        if text["drwkv.backend"] not in BACKEND_FLAGS:
            raise ValueError(f"the image's setting drwkv.backend names an unknown backend {text['drwkv.backend'][:80]!r} "
                             f"(known: {', '.join(BACKEND_FLAGS)})")
        args = [BACKEND_FLAGS[text["drwkv.backend"]], text["drwkv.artifact"], "--sampler", text["drwkv.sampler"],
                "--steps", text["drwkv.steps"]]
        if "drwkv.precision" in text:
            args += ["--precision", text["drwkv.precision"]]
        if text["drwkv.sampler"] == "ddim":
            args += ["--eta", text["drwkv.eta"]]
        args += ["--cfg-scale", text["drwkv.cfg_scale"], "--seed", text["drwkv.seed"],
                 "--batch-size", text["drwkv.batch_size"]]
        args += [] if text["drwkv.clip_x0"] == "True" else ["--no-clip"]
        args += [a for flag in ("vae_decoder", "vae_tile", "vae_tile_overlap") if f"drwkv.{flag}" in text
                 for a in (f"--{flag.replace('_', '-')}", text[f"drwkv.{flag}"])]
        if "drwkv.index" in text:  # one image of a directory run
            labels, first, count = [text.get("drwkv.label")], int(text["drwkv.index"]), 1
            out = ["--out", "regenerated"]
        else:
            first, count = int(text["drwkv.first_image"]), int(text["drwkv.num_images"])
            labels = text["drwkv.labels"].split(",") if "drwkv.labels" in text else [None]
            out = ["--nrow", text["drwkv.nrow"], "--out", "regenerated.png"]
    except KeyError as e:
        raise ValueError(f"the image lacks the drwkv-infer setting {e.args[0]} (not written by drwkv-infer?)") from None
    if labels[0] is not None:  # image i has class i mod len(classes): rotate so that image `first` gets labels[0]
        n = len(labels)
        labels = [labels[(j - first) % n] for j in range(n)]
        period = next(p for p in range(1, n + 1) if n % p == 0 and labels == labels[:p] * (n // p))
        args += ["--class", ",".join(labels[:period])]  # the shortest list that cycles to the same labels
    return args + ["--num-images", str(count), "--first-image", str(first)] + out
