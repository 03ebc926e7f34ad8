"""SAM segmenter: ``segment_anything.SamAutomaticMaskGenerator`` + the eq. (5) post-process.

The generator's masks are ranked by their ``predicted_iou`` (paper eq. 5). Images are reduced
to ``long_side`` before generation (SAM works at 1024 px anyway; the mask post-processing cost
grows with the resolution) and the label map is brought back to the image's size.

Batched image encoder: :meth:`SamSegmenter.segment_batch` runs ``sam.image_encoder`` once for
several images, then generates each image's masks from its precomputed embedding. The generator
computes an embedding by calling ``predictor.set_image`` once per crop (``_process_crop`` in
``automatic_mask_generator.py``), so the generator is given a predictor that takes a preloaded
embedding for its next ``set_image`` call. With ``crop_n_layers > 0`` each crop needs its own
embedding, so images are then encoded one by one by the generator itself.
"""
from __future__ import annotations

import importlib.metadata
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import rle_to_mask
from segment_anything.utils.transforms import ResizeLongestSide

from annotate.segment.postprocess import postprocess, rank_masks
from rsfiqa_core.components import Segmentation, resize_segmentation
from rsfiqa_core.device import resolve_device
from rsfiqa_core.imageio import check_rgb, downscale

OUTPUT_MODES = ("binary_mask", "uncompressed_rle")


def tiny_sam(seed: int = 0) -> Sam:
    """A small random-init SAM (256 px input, 2 encoder blocks, width 32) for CPU tests and benchmarks:
    the same code paths as ``vit_b``/``vit_l``/``vit_h`` without a checkpoint."""
    torch.manual_seed(seed)
    dim, size = 32, 256
    return Sam(
        image_encoder=ImageEncoderViT(img_size=size, patch_size=16, embed_dim=dim, depth=2, num_heads=2,
                                      out_chans=dim, window_size=4, global_attn_indexes=(1,), use_rel_pos=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(size // 16, size // 16),
                                     input_image_size=(size, size), mask_in_chans=4),
        mask_decoder=MaskDecoder(transformer_dim=dim, num_multimask_outputs=3, iou_head_depth=2, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2)),
    ).eval()


SAM_BUILDERS = {**sam_model_registry, "tiny": tiny_sam}  # model_type -> builder; "tiny" for tests


def load_sam(checkpoint: str | Path, model_type: str = "vit_b", device: str | torch.device = "cpu") -> Sam:
    """A SAM model of ``model_type`` with the weights of ``checkpoint`` (a local file).

    The state dict is loaded here with ``map_location`` because ``build_sam`` calls
    ``torch.load`` without one (GPU-saved checkpoints would fail on CPU-only machines).
    """
    if model_type not in SAM_BUILDERS:
        raise ValueError(f"unknown SAM model_type {model_type!r}; choose one of {sorted(SAM_BUILDERS)}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint not found: {path} (download e.g. sam_vit_b_01ec64.pth from "
                                f"the segment-anything README and pass its local path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt/foreign files; all mean "unreadable"
        raise ValueError(f"SAM checkpoint {path} is unreadable: {e}") from e
    model = SAM_BUILDERS[model_type]()
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"SAM checkpoint {path} does not fit model_type {model_type!r}: {e}") from e
    return model.to(device).eval()


class _PreloadedEmbeddingPredictor(SamPredictor):
    """A ``SamPredictor`` whose next ``set_image`` uses an embedding computed beforehand."""

    def __init__(self, model: Sam) -> None:
        super().__init__(model)
        self._preloaded: tuple[torch.Tensor, tuple[int, int], tuple[int, int]] | None = None

    def preload(self, features: torch.Tensor, original_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        self._preloaded = (features, original_size, input_size)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if self._preloaded is None:
            super().set_image(image, image_format)
            return
        features, original_size, input_size = self._preloaded
        self._preloaded = None
        if tuple(image.shape[:2]) != original_size:
            raise RuntimeError(f"preloaded SAM embedding is for size {original_size}, got an image of {image.shape[:2]}")
        self.reset_image()
        self.features, self.original_size, self.input_size = features, original_size, input_size
        self.is_image_set = True


class SamSegmenter:
    """SAM automatic masks -> L regions (paper eq. 5); see the module docstring."""

    name = "sam"
    uses_device = True

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        model_type: str = "vit_b",
        num_regions: int = 5,
        device: str = "auto",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        long_side: int | None = 1024,
        output_mode: str = "binary_mask",
        encoder_batch_size: int = 4,
        model: Sam | None = None,
    ) -> None:
        if (checkpoint is None) == (model is None):
            raise ValueError("SamSegmenter needs exactly one of `checkpoint` (a local file) or `model` (a built Sam)")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.device = resolve_device(device)
        self.model = (load_sam(checkpoint, model_type, self.device) if model is None
                      else model.to(self.device).eval())
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.model_type = model_type if model is None else "custom"
        self.num_regions = num_regions
        self.long_side = long_side
        self.encoder_batch_size = encoder_batch_size
        self.options = dict(points_per_side=points_per_side, points_per_batch=points_per_batch,
                            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                            box_nms_thresh=box_nms_thresh, crop_n_layers=crop_n_layers, output_mode=output_mode)
        self.generator = SamAutomaticMaskGenerator(self.model, **self.options)
        self.predictor = _PreloadedEmbeddingPredictor(self.model)
        self.generator.predictor = self.predictor
        self.transform = ResizeLongestSide(self.model.image_encoder.img_size)

    def segment(self, image: np.ndarray) -> Segmentation:
        """L regions of one RGB uint8 HxWx3 image; region 0 has the highest predicted IoU."""
        return self.segment_batch([image])[0]

    @torch.no_grad()
    def segment_batch(self, images: Sequence[np.ndarray]) -> list[Segmentation]:
        """L regions per image, encoding up to ``encoder_batch_size`` images per encoder call."""
        for im in images:
            check_rgb(im)
        small = [downscale(im, self.long_side) for im in images]
        out: list[Segmentation] = []
        for start in range(0, len(small), self.encoder_batch_size):
            chunk = small[start:start + self.encoder_batch_size]
            embeddings = self.encode(chunk) if self.options["crop_n_layers"] == 0 else [None] * len(chunk)
            for im, emb in zip(chunk, embeddings):
                if emb is not None:
                    self.predictor.preload(*emb)
                out.append(self.masks_to_regions(self.generator.generate(im), im.shape[:2]))
        return [resize_segmentation(seg, im.shape[:2]) for seg, im in zip(out, images)]

    def encode(self, images: Sequence[np.ndarray]) -> list[tuple[torch.Tensor, tuple[int, int], tuple[int, int]]]:
        """One ``image_encoder`` call for several images: (embedding, original size, input size) each."""
        inputs, sizes = [], []
        for im in images:
            x = torch.as_tensor(self.transform.apply_image(im), device=self.device).permute(2, 0, 1).contiguous()
            sizes.append((tuple(im.shape[:2]), tuple(x.shape[-2:])))
            inputs.append(self.model.preprocess(x[None].float())[0])  # normalise + pad to a square
        features = self.model.image_encoder(torch.stack(inputs))
        return [(features[i:i + 1], orig, inp) for i, (orig, inp) in enumerate(sizes)]

    def masks_to_regions(self, records: list[dict[str, Any]], shape: tuple[int, int]) -> Segmentation:
        """Eq. (5) on the generator's records, decoding only the kept masks."""
        scores = [float(r["predicted_iou"]) for r in records]
        kept = rank_masks(scores, self.num_regions - 1)
        masks = [self.as_mask(records[i]["segmentation"]) for i in kept]
        seg = postprocess(masks, [scores[i] for i in kept], self.num_regions, shape=shape)
        seg.info.update(segmenter="sam", num_masks=len(records))
        return seg

    @staticmethod
    def as_mask(segmentation: np.ndarray | dict) -> np.ndarray:
        return rle_to_mask(segmentation) if isinstance(segmentation, dict) else np.asarray(segmentation, dtype=bool)

    def config(self) -> dict[str, Any]:
        """The constructor options (recorded in every shard's annotator block)."""
        return {"num_regions": self.num_regions, "checkpoint": self.checkpoint, "model_type": self.model_type,
                "long_side": self.long_side, **self.options}

    def provenance(self) -> dict[str, Any]:
        return {"versions": {"segment-anything": importlib.metadata.version("segment-anything"),
                             "torch": torch.__version__}}
