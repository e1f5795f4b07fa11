"""anomalib's PatchCore on the decision study's splits: the peer, paired image by image with exdd's candidates.

For one dev set and the splits of scripts/studies/study_splits.py (the same pooled images, group splits and build
seeds, read back from a study variant's OUT/<set>/<variant>/split{S}-build{B}.json and checked): anomalib 2.7's
PatchCore (scripts/benchmarks/bench_anomalib.anomalib_model: wide_resnet50_2 with the same weights file in its timm
backbone, layer2 + layer3, d = 1536, coreset 0.01, 9 neighbours, its own reader, resize and normalisation) is fitted
on exactly the normals exdd's negative bank keeps in that split and build (its 10 % hold-out removed) and scores the
split's test images. Written to OUT/<set>/peer-anomalib/split{S}-build{B}.npz (scores, maps at the input size, the
study's image ids) + .json, read by `study_decision --peer anomalib`.

anomalib's embedding of an image does not depend on the split, so each pooled image is embedded once
(bench_anomalib.anomalib_embed: its extractor, pooler and embedding, float32, kept in a memmap under --work); each
split then runs anomalib's own coreset (PatchcoreModel.subsample_embedding, torch seed = build seed) and the tail of
its forward (nearest_neighbors, compute_anomaly_score, anomaly_map_generator). The first split checks that this
equals anomalib's whole forward on a batch of its test images.

  nice -n 10 .venv/bin/python -m scripts.studies.peer_splits --set ksdd1_dev:632x224 --splits 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from exdd.datasets import Sample, holdout_split
from scripts.benchmarks.bench_anomalib import anomalib_embed, anomalib_model, anomalib_read
from scripts.common import STUDY_DATA
from scripts.studies.study_splits import HOLDOUT, group_split, groups_of, pooled_samples

CORESET = 0.01  # anomalib's coreset_sampling_ratio, as exdd's negative ratio
TOL = 1e-4  # relative: the split-out tail against anomalib's whole forward (same float32 ops, other batching)


def study_split(meta: Dict, samples: Sequence[Sample], groups: Sequence[str]) -> Tuple[List[int], List[int]]:
    """(kept normals, test) indices into the study's pooled images for the split and build seed of a study record,
    checked against the record (its normals count and test count)."""
    orig_test = [s for s in samples if s.split == "test"]
    tr, te = group_split(samples, groups, meta["split"], orig_test)
    kept, _ = holdout_split([samples[i] for i in tr], HOLDOUT, meta["build_seed"])
    pos = {s.path: i for i, s in enumerate(samples)}
    normals = sorted(pos[s.path] for s in kept if s.label == 0)
    if len(normals) != meta["normals"] or len(te) != meta["test"]:
        raise SystemExit(
            f"split {meta['split']}: {len(normals)} normals / {len(te)} test, the study has "
            f"{meta['normals']} / {meta['test']}"
        )
    return normals, te


class Embeddings:
    """anomalib's (P, 1536) float32 embedding of every pooled image, computed once into a memmap."""

    def __init__(self, work: str, samples: Sequence[Sample], net, transform, weights: str, batch: int = 8):
        self.samples, self.net, self.transform, self.batch = list(samples), net, transform, batch
        self.weights = f"{os.path.abspath(weights)}:{os.path.getsize(weights)}"  # another file: embedded again
        os.makedirs(work, exist_ok=True)
        self.path = os.path.join(work, "embeddings.f32")
        self.done_path = os.path.join(work, "done.json")
        probe, self.grid = anomalib_embed(net, anomalib_read([samples[0].path], transform))
        self.P, self.C = probe.shape[1:]
        shape = (len(samples), self.P, self.C)
        done = json.load(open(self.done_path)) if os.path.isfile(self.done_path) else None
        fresh = done is None or done.get("weights") != self.weights or done.get("paths") != [s.path for s in samples]
        fresh = fresh or done.get("shape") != list(shape)
        self.arr = np.memmap(self.path, np.float32, "w+" if fresh else "r+", shape=shape)
        self.have = np.zeros(len(samples), bool) if fresh else np.array(done["have"], bool)

    def ensure(self, idx: Sequence[int]) -> None:
        """Embed the images of idx that are not embedded yet."""
        todo = [i for i in idx if not self.have[i]]
        t0 = time.time()
        for k in range(0, len(todo), self.batch):
            part = todo[k : k + self.batch]
            emb, _ = anomalib_embed(self.net, anomalib_read([self.samples[i].path for i in part], self.transform))
            self.arr[part] = emb
            self.have[part] = True
        if todo:
            self.arr.flush()
            json.dump(
                {
                    "weights": self.weights,
                    "paths": [s.path for s in self.samples],
                    "shape": list(self.arr.shape),
                    "have": self.have.tolist(),
                },
                open(self.done_path, "w"),
            )
            print(f"embedded {len(todo)} images in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)


def score(net, emb: np.ndarray, grid: Tuple[int, int], out_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """The tail of anomalib's PatchcoreModel.forward on (b, P, C) embeddings: its scores (b,) and maps (b, H, W)."""
    b = emb.shape[0]
    e = torch.from_numpy(np.ascontiguousarray(emb.reshape(-1, emb.shape[-1])))
    with torch.no_grad():
        patch, loc = net.nearest_neighbors(embedding=e, n_neighbors=1)
        patch, loc = patch.reshape((b, -1)), loc.reshape((b, -1))
        pred = net.compute_anomaly_score(patch, loc, e)
        amap = net.anomaly_map_generator(patch.reshape((b, 1) + tuple(grid)), torch.Size(out_hw))
    return pred.reshape(-1).numpy(), amap[:, 0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, help="NAME:HxW, as study_splits")
    ap.add_argument("--splits", default="0,1,2,3,4")
    ap.add_argument("--build-seeds", default="0")
    ap.add_argument("--variant", default="random-d256", help="the study variant whose splits are followed")
    ap.add_argument("--weights", default="../shared/weights/wrn50-random0-bncal.safetensors")
    ap.add_argument("--out", default="runs/decision")
    ap.add_argument("--work", default="runs/peer_embeddings")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    name, size = a.set.split(":")
    hw = tuple(int(v) for v in size.split("x"))
    out_dir = os.path.join(a.out, name, "peer-anomalib")
    os.makedirs(out_dir, exist_ok=True)
    model, transform = anomalib_model(a.weights, hw, CORESET)
    net = model.model.eval()
    samples, _, _, _ = pooled_samples(os.path.join(STUDY_DATA, name))
    by_path = {s.path: s for s in samples}
    checked = False
    emb = None
    study: List[Sample] = []  # the study's pooled images (cache-filtered) in its order, the same for every split
    for split in (int(v) for v in a.splits.split(",")):
        for bseed in (int(v) for v in a.build_seeds.split(",")):
            stem = os.path.join(out_dir, f"split{split}-build{bseed}")
            if os.path.isfile(stem + ".json"):
                continue
            meta = json.load(open(os.path.join(a.out, name, a.variant, f"split{split}-build{bseed}.json")))
            if emb is None:
                study = [by_path[p] for p in meta["paths"]]
                groups = groups_of(os.path.join(STUDY_DATA, name), study)
                emb = Embeddings(os.path.join(a.work, f"{name}-{hw[0]}x{hw[1]}"), study, net, transform, a.weights)
            elif meta["paths"] != [s.path for s in study]:
                raise SystemExit(f"{stem}: the study pools other images in this split than in the first one")
            normals, te = study_split(meta, study, groups)
            study_ids = np.load(os.path.join(a.out, name, a.variant, f"split{split}-build{bseed}.npz"))["test_ids"]
            if not np.array_equal(study_ids, te):
                raise SystemExit(f"{stem}: other test images than the study's")
            t0 = time.time()
            emb.ensure(normals + te)
            t_emb = time.time() - t0
            net.embedding_store.clear()
            net.embedding_store.extend(torch.from_numpy(np.array(emb.arr[i])) for i in normals)
            torch.manual_seed(bseed)  # the k-center start and anomalib's sparse projection
            t1 = time.time()
            model.fit()
            t_fit = time.time() - t1
            scores = np.zeros(len(te), np.float32)
            maps = np.zeros((len(te),) + hw, np.float32)
            for k in range(0, len(te), 8):
                part = te[k : k + 8]
                scores[k : k + len(part)], maps[k : k + len(part)] = score(net, emb.arr[part], emb.grid, hw)
            if not checked:  # the split-out path is anomalib's own forward
                part = te[:4]
                with torch.no_grad():
                    ref = net(anomalib_read([study[i].path for i in part], transform))
                ds = np.abs(ref.pred_score.reshape(-1).numpy() - scores[:4]).max() / np.abs(scores[:4]).max()
                dm = np.abs(ref.anomaly_map[:, 0].numpy() - maps[:4]).max() / np.abs(maps[:4]).max()
                if ds > TOL or dm > TOL:
                    raise SystemExit(f"the cached path differs from anomalib's forward: scores {ds:.2e}, maps {dm:.2e}")
                print(f"checked against anomalib's forward: scores {ds:.2e}, maps {dm:.2e} (relative)", file=sys.stderr)
                checked = True
            ids = np.array(te, np.int32)
            np.savez(stem + ".npz", scores=scores, maps=maps, ids=ids)
            json.dump(
                {
                    "set": name,
                    "input_size": list(hw),
                    "split": split,
                    "build_seed": bseed,
                    "variant_followed": a.variant,
                    "weights": a.weights,
                    "normals": len(normals),
                    "test": len(te),
                    "memory_bank": list(net.memory_bank.shape),
                    "coreset_sampling_ratio": CORESET,
                    "num_neighbors": net.num_neighbors,
                    "embed_s": round(t_emb, 1),
                    "coreset_s": round(t_fit, 1),
                    "paths": meta["paths"],
                },
                open(stem + ".json", "w"),
            )
            print(
                f"{name} anomalib split {split} build {bseed}: bank {list(net.memory_bank.shape)}, embed {t_emb:.0f}s, "
                f"coreset {t_fit:.0f}s, test {len(te)}",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    main()
