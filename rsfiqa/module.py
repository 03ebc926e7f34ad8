"""The RSFIQA LightningModule: training, evaluation and prediction around a registered network
(:mod:`rsfiqa.model.registry`: :class:`RSFIQANet`, or the statistics model).

Loss: eq. (11), MSE between the predicted and the normalised MOS. Metrics (paper "Metrics", plus
KRCC and RMSE): PLCC (eq. 12), SRCC, KRCC and RMSE on the normalised scale, from torchmetrics,
logged as ``{stage}/plcc`` etc. and ``{stage}/loss`` (the epoch MSE). Several test sets (cross-
dataset protocol) each keep their own metrics, logged as ``test/<dataset>/srcc``; they are never
pooled. Optimiser and schedule follow "Training Details": AdamW (lr 3e-5, weight decay 1e-5) with
per-part learning rates, cosine annealing (T_max 50, eta_min 0), stepped once per epoch.

Under DDP every rank evaluates the whole validation/test set (see ``ShardDataModule``), so
evaluation metrics are computed locally (identical on all ranks, nothing padded or duplicated);
training metrics cover disjoint samples and are synchronised.
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.nn import functional as F
from torchmetrics import MetricCollection
from torchmetrics.regression import KendallRankCorrCoef, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from rsfiqa.checkpoint import DIGEST_KEY
from rsfiqa.model.feature_cache import FeatureCache, TextCache
from rsfiqa.model import registry
from rsfiqa.model.registry import NetOptions
from rsfiqa_core import contract
from rsfiqa_core.digests import state_digest
from rsfiqa_core.usererrors import SettingError

METRIC_NAMES = ("plcc", "srcc", "krcc", "rmse")


def quality_metrics(prefix: str, sync: bool) -> MetricCollection:
    """Epoch loss (MSE) and PLCC, SRCC, KRCC, RMSE on the normalised MOS scale."""
    kw = {"sync_on_compute": sync}
    return MetricCollection({"loss": MeanSquaredError(**kw), "plcc": PearsonCorrCoef(**kw),
                             "srcc": SpearmanCorrCoef(**kw), "krcc": KendallRankCorrCoef(**kw),
                             "rmse": MeanSquaredError(squared=False, **kw)}, prefix=prefix)


def check_learning_rates(**rates: float | None) -> None:
    """Learning rates must be positive and the weight decay non-negative (``None``: not set)."""
    for name, value in rates.items():
        low_ok = value is None or (value >= 0 if name == "weight_decay" else value > 0)
        if not low_ok or (value is not None and value != value):
            bound = ">= 0" if name == "weight_decay" else "> 0"
            raise SettingError(f"model.{name} must be {bound}, got {value}; fix the config or override")


def finite_rows(features: Tensor, batch: dict[str, Any]) -> Tensor:
    """``features`` [B, D] of a batch, refused (naming the first image) where a row holds NaN/inf."""
    bad = (~torch.isfinite(features).all(1)).nonzero().flatten().tolist()
    if bad:
        first = f"{batch['dataset'][bad[0]]}/{batch['image_name'][bad[0]]} ({batch['key'][bad[0]]})"
        more = f" and {len(bad) - 1} more image(s)" if len(bad) > 1 else ""
        raise contract.ContractError(f"{first}{more}: image features not finite (NaN/inf); the feature cache "
                                     f"entry or the stored image is damaged: delete model.feature_cache's entries "
                                     f"or annotate the image again")
    return features


class RSFIQAModule(LightningModule):
    """A registered network plus loss, metrics and optimiser; it asks the network's config what it
    needs (a closed-form step, a text cache), never its options.

    Args:
        net: the network: ``arch`` and its options (:class:`~rsfiqa.model.registry.NetOptions`, an
            architecture's config, or a mapping of them as checkpoints store it under
            ``hyper_parameters["net"]``).
        lr: AdamW learning rate (paper: 3e-5); the fusion/RSA/head parameters always use it.
        weight_decay: AdamW weight decay (paper: 1e-5).
        t_max: cosine annealing period in epochs (paper: 50).
        eta_min: cosine annealing floor (paper: 0).
        backbone_lr: learning rate of the image backbone (None = lr).
        text_lr: learning rate of the text encoder when it is not frozen (None = lr).
        feature_cache: directory of a disk cache of the frozen backbone's features and, when the
            text encoder is frozen, of the region-text embeddings (:mod:`rsfiqa.model.feature_cache`;
            shared across runs); needs ``freeze_backbone=True``. None = no cache.
        feature_cache_dtype: dtype the cached features are stored in (float16, bfloat16, float32).
    """

    def __init__(
        self,
        net: NetOptions = NetOptions(),
        lr: float = 3e-5,
        weight_decay: float = 1e-5,
        t_max: int = 50,
        eta_min: float = 0.0,
        backbone_lr: float | None = None,
        text_lr: float | None = None,
        feature_cache: str | None = None,
        feature_cache_dtype: str = "float16",
    ):
        check_learning_rates(lr=lr, backbone_lr=backbone_lr, text_lr=text_lr, weight_decay=weight_decay)
        super().__init__()
        config = registry.as_config(net)
        self.save_hyperparameters(ignore=["net"])
        self.hparams["net"] = registry.config_record(config)  # plain data: checkpoints load with weights_only=True
        self.net = registry.build_net(config)
        self.feature_cache = self.text_cache = None
        if feature_cache is not None:
            self.feature_cache, *self.extra_feature_caches = [
                FeatureCache(feature_cache, backbone, feature_cache_dtype).attach() for backbone in self.net.backbones]
            if "text_encoder" in config.frozen_parts():
                self.text_cache = TextCache(feature_cache, self.net.text_encoder).attach()
        self.train_metrics = quality_metrics("train/", sync=True)
        self.val_metrics = quality_metrics("val/", sync=False)
        self.test_metrics = nn.ModuleList()
        self.test_names: dict[int, str] = {}

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Predicted normalised quality [B] of a data-module batch."""
        return self.net(batch["image"], batch["label_map"], batch["region_valid"], batch["texts"])

    # ---------------------------------------------------------------- steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.net.forward_features(batch["image"], batch["label_map"], batch["region_valid"], batch["texts"])
        pred, target = out["score"], batch["mos_norm"]
        trained = out.get("members", pred[:, None])  # the ensemble head: each member gets its own eq. (11)
        loss = F.mse_loss(trained, target[:, None].expand_as(trained))  # eq. (11)
        self.log("train/loss_step", loss, prog_bar=True, batch_size=len(pred))
        self.train_metrics.update(pred.detach(), target)
        return loss

    def on_fit_start(self) -> None:
        """For a network with a closed-form step (``arch: stats``: the ensemble head's ridge and
        standardisation, :meth:`~rsfiqa.model.stats.StatsNet.fit_closed_form`): solve it from the
        training and validation images before anything is validated or trained; a resumed run
        solves it again (same images, same result)."""
        if not self.net.config.closed_form:
            return
        arch = f"arch {self.net.config.arch!r}"
        if self.trainer.world_size > 1:
            raise RuntimeError(f"{arch} trains on one device: its closed-form step needs every training image "
                               f"in one process")
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "plain_train_dataloader"):
            raise RuntimeError(f"{arch} needs the shard data module (rsfiqa fit --data ...): its closed-form step "
                               f"is solved on the unaugmented training images")
        train_x, train_y = self.image_statistics(datamodule.plain_train_dataloader())
        val_x, val_y = self.image_statistics(datamodule.val_dataloader())
        fit = self.net.fit_closed_form(train_x, train_y, val_x, val_y)
        self.print(f"ensemble head: ridge on {len(train_x)} training images, penalty {fit['alpha']:.3g} "
                   f"(validation SRCC {fit['val_srcc']:.4f} on {len(val_x)} images)")

    @torch.no_grad()
    def image_statistics(self, loader: Any) -> tuple[Tensor, Tensor]:
        """(statistics [N, D], normalised MOS [N]) of every image a loader yields."""
        if isinstance(loader, (list, tuple)):
            raise RuntimeError(f"arch {self.net.config.arch!r} needs exactly one validation set for its closed-form step")
        features, targets = [], []
        for batch in loader:
            features.append(finite_rows(self.net.image_statistics(batch["image"].to(self.device)), batch))
            targets.append(batch["mos_norm"].to(self.device))
        return torch.cat(features), torch.cat(targets)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self(batch), batch["mos_norm"])

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.test_names.setdefault(dataloader_idx, batch["dataset"][0])
        self.test_metrics[dataloader_idx].update(self(batch), batch["mos_norm"])

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """One row per image: key, dataset, image name, predicted normalised score, the prediction on
        the dataset's own MOS scale, and the true MOS."""
        pred = self(batch).float().cpu().tolist()
        return [{"key": batch["key"][i], "dataset": batch["dataset"][i], "image": batch["image_name"][i],
                 "pred_norm": p,
                 "pred_mos": contract.denormalise_mos(p, batch["mos_range"][i].tolist(),
                                                      bool(batch["higher_better"][i])),
                 "mos": float(batch["mos"][i])} for i, p in enumerate(pred)]

    # ---------------------------------------------------------------- epoch ends
    def _compute(self, metrics: MetricCollection) -> dict[str, float]:
        values = {k: float(v) for k, v in metrics.compute().items()}
        metrics.reset()
        return values

    def _log_epoch(self, values: dict[str, float]) -> None:
        # identical on every rank for evaluation, already synchronised for training: the mean is exact
        self.log_dict(values, sync_dist=True, add_dataloader_idx=False)

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self._compute(self.train_metrics))

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self._compute(self.val_metrics))

    def on_test_start(self) -> None:
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, (list, tuple)) else 1
        self.test_metrics = nn.ModuleList(quality_metrics("", sync=False) for _ in range(count)).to(self.device)
        self.test_names = {}

    def on_test_epoch_end(self) -> None:
        """Log each test set's metrics separately and print a per-dataset table."""
        names = self._unique_test_names()
        table = {}
        for idx, name in names.items():
            values = self._compute(self.test_metrics[idx])
            prefix = "test/" if len(self.test_metrics) == 1 else f"test/{name}/"
            self._log_epoch({prefix + k: v for k, v in values.items()})
            table[name] = values
        self.print(format_table(table))

    def _unique_test_names(self) -> dict[int, str]:
        names: dict[int, str] = {}
        for idx, name in sorted(self.test_names.items()):
            names[idx] = name if name not in names.values() else f"{name}#{idx}"
        return names

    # ---------------------------------------------------------------- optimiser, checkpoint
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the net's parameter groups, cosine-annealed once per epoch."""
        hp = self.hparams
        lrs = {"backbone": hp.backbone_lr, "text": hp.text_lr, "head": None}
        groups = [{"params": params, "lr": hp.lr if lrs[name] is None else lrs[name], "name": name}
                  for name, params in self.net.param_groups().items() if params]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=hp.t_max, eta_min=hp.eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the data settings scoring needs (MOS scales, input size, text settings) and the weights'
        digest (verified when the checkpoint is read, :mod:`rsfiqa.checkpoint`)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "state_dict"):
            checkpoint["rsfiqa_data"] = datamodule.state_dict()
        checkpoint[DIGEST_KEY] = state_digest(checkpoint["state_dict"])


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A small plain-text table: one line per dataset, columns PLCC SRCC KRCC RMSE."""
    width = max([7, *(len(n) for n in rows)])
    lines = [f"{'dataset':<{width}}  " + "  ".join(f"{m.upper():>6}" for m in METRIC_NAMES)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{values[m]:>6.3f}" for m in METRIC_NAMES)
              for name, values in rows.items()]
    return "\n".join(lines)
