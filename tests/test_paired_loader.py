"""The paired loader: N positives + N negatives per batch, own seeds per stream, correct across ranks."""
import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import launch

from mammo_tl.data import build_paired_train_loader, split_positive_negative
from tests.common import ensure_tiny_datasets, tiny_cfg


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _expected_stream(seed, size, n):
    """TrainingSampler's documented order for one process: randperm(size) with the seed, repeated."""
    g = torch.Generator()
    g.manual_seed(seed)
    out = []
    while len(out) < n:
        out += torch.randperm(size, generator=g).tolist()
    return out[:n]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_n_positive_then_n_negative(tiny_datasets, workers):
    cfg = tiny_cfg(opts=["SOLVER.IMS_PER_BATCH", 4, "DATALOADER.NUM_WORKERS", workers,
                         "DATALOADER.PAIRED.POSITIVE_SEED", 1, "DATALOADER.PAIRED.NEGATIVE_SEED", 2])
    for batch in _take(build_paired_train_loader(cfg), 4):
        assert len(batch) == 4
        assert [len(b["instances"]) == 0 for b in batch] == [False, False, True, True]
        assert all(len(b["instances"]) > 0 for b in batch[:2])
        assert all(len(b["instances"]) == 0 for b in batch[2:])
        assert all(tuple(b["image"].shape) == (3, 128, 128) for b in batch)


def test_streams_follow_their_own_seeds(tiny_datasets):
    records = DatasetCatalog.get("mammo_synth_tiny_train")
    positives, negatives = split_positive_negative(records)

    def files(pos_seed, neg_seed):
        cfg = tiny_cfg(opts=["SOLVER.IMS_PER_BATCH", 2, "DATALOADER.PAIRED.POSITIVE_SEED", pos_seed,
                             "DATALOADER.PAIRED.NEGATIVE_SEED", neg_seed])
        batches = _take(build_paired_train_loader(cfg), 12)
        return [b[0]["file_name"] for b in batches], [b[1]["file_name"] for b in batches]

    pos_a, neg_a = files(1, 2)
    pos_b, neg_b = files(1, 3)
    assert pos_a == [positives[i]["file_name"] for i in _expected_stream(1, len(positives), 12)]
    assert neg_a == [negatives[i]["file_name"] for i in _expected_stream(2, len(negatives), 12)]
    assert pos_a == pos_b  # the negative seed does not move the positive stream
    assert neg_a != neg_b


def test_refuses_data_without_negatives(tiny_datasets):
    from detectron2.data import DatasetCatalog

    name = "mammo_synth_tiny_positives_only"
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: [r for r in DatasetCatalog.get("mammo_synth_tiny_train")
                                               if r["annotations"]])
    cfg = tiny_cfg(opts=["DATASETS.TRAIN", (name,)])
    with pytest.raises(ValueError, match="found .* positive and 0 negative"):
        build_paired_train_loader(cfg)


def test_batch_size_must_split_into_pairs(tiny_datasets):
    cfg = tiny_cfg(opts=["SOLVER.IMS_PER_BATCH", 3])
    with pytest.raises(ValueError, match="IMS_PER_BATCH=3"):
        build_paired_train_loader(cfg)


def _worker(root, out_dir):
    """Runs in each of the launched processes: train a few iterations, recording every batch seen."""
    from detectron2.utils import comm

    from mammo_tl.engine import Trainer

    torch.set_num_threads(1)
    ensure_tiny_datasets(root)
    rank = comm.get_rank()
    # models chosen on the validation set across the two processes: every process must test the checkpoint the
    # main process chose (only it sees the validation metrics)
    cfg = tiny_cfg(opts=["SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100,
                         "DATALOADER.PAIRED.POSITIVE_SEED", 7, "DATALOADER.PAIRED.NEGATIVE_SEED", 8,
                         "OUTPUT_DIR", os.path.join(out_dir, "train"), "DATASETS.VALIDATION", ("mammo_synth_tiny_val",),
                         "TEST.EVAL_PERIOD", 1, "TEST.PATIENT.BOOTSTRAP", 0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    seen, tested = [], []

    class RecordingTrainer(Trainer):
        def _test_checkpoint(self, weights, folder):
            tested.append([os.path.basename(weights) if weights else None, folder])
            return super()._test_checkpoint(weights, folder)

        @classmethod
        def build_train_loader(cls, cfg):
            for batch in super().build_train_loader(cfg):
                seen.append([(b["file_name"], len(b["instances"]) == 0) for b in batch])
                cls._last_batch = batch
                yield batch

    trainer = RecordingTrainer(cfg)
    trainer.train()
    # each rank's own loss dict, from one more forward pass of the (DDP) model on its own pair
    from detectron2.utils.events import EventStorage

    with EventStorage():
        losses = {k: v.item() for k, v in trainer.model(RecordingTrainer._last_batch).items()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"seen": seen[:3], "iter": trainer.iter, "world": comm.get_world_size(), "tested": tested,
                   "loss_names": sorted(k for k in losses if k.startswith("loss_")),
                   "loss_rpn_tl": losses["loss_rpn_tl"], "loss_sim": losses["loss_sim"]}, f)


@pytest.mark.slow
def test_two_process_gloo_training(tiny_datasets, tmp_path):
    launch(_worker, 2, dist_url="auto", args=(tiny_datasets, str(tmp_path)))
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    for r in ranks:
        assert r["world"] == 2 and r["iter"] == 3  # trained iterations 0, 1, 2
        assert len(r["seen"]) == 3
        for batch in r["seen"]:
            assert [neg for _, neg in batch] == [False, True]  # IMS_PER_BATCH 4 over 2 ranks: one pair each
        assert {"loss_rpn_tl", "loss_sim"} <= set(r["loss_names"])
        assert r["loss_rpn_tl"] > 0 and r["loss_sim"] > 0
    assert ranks[0]["loss_names"] == ranks[1]["loss_names"]
    # both processes tested the same checkpoints: the final one, then the one selection.json names
    selection = json.load(open(tmp_path / "train" / "selection.json"))
    chosen = selection["selected"]["weights"]
    assert ranks[0]["tested"] == ranks[1]["tested"] == [
        [None, "inference_final"], [None if chosen == "model_final.pth" else chosen, "inference"]]
    assert json.load(open(tmp_path / "train" / "inference" / "eval_results.json"))["patient"]["num_patients"] == 6
    # each rank takes its own slice of both streams
    first = [[f for f, _ in b] for b in ranks[0]["seen"]]
    second = [[f for f, _ in b] for b in ranks[1]["seen"]]
    assert first != second


def test_paired_mapper_refuses_a_swapped_pair(tiny_datasets):
    from mammo_tl.data import MammogramDatasetMapper, PairedDatasetMapper

    positives, negatives = split_positive_negative(DatasetCatalog.get("mammo_synth_tiny_train"))
    mapper = PairedDatasetMapper(MammogramDatasetMapper(tiny_cfg(), is_train=True))
    pos, neg = mapper((positives[0], negatives[0]))
    assert len(pos["instances"]) > 0 and len(neg["instances"]) == 0
    with pytest.raises(ValueError, match=f"{negatives[0]['file_name']}: expected a positive image"):
        mapper((negatives[0], negatives[1]))
    with pytest.raises(ValueError, match=f"{positives[1]['file_name']}: expected a negative image"):
        mapper((positives[0], positives[1]))
