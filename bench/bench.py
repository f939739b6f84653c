"""Speed and memory measurements of the study's hot paths (`make bench`).

Measures, on the best available device:

* feature extraction throughput of an extractor at the study's input size,
* training M heads at once with `train_heads` against M one-at-a-time trainings,
* the heuristic h over a 20,000-sample training set (time and peak memory),
* clean-label crafting time per poison and iteration.

Writes ``build/bench/bench.json`` and prints a table. Inputs are synthetic (random
features, MNIST-5k images), so the numbers measure speed, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from mexp_lib import data, extractors, features, heads, heuristic, poisoning
from mexp_lib.runner import git_commit, machine_description


def _timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def bench_features(extractor_name: str, input_size: int, count: int) -> dict:
    images = data.load_source("mnist5k", "train").read(np.arange(count))
    extractor = extractors.build_extractor(extractor_name, input_size=input_size)
    features.extract_features(extractor, images[:8], progress=False)  # warm-up
    _, seconds = _timed(lambda: features.extract_features(extractor, images, progress=False))
    return {"extractor": extractor_name, "input_size": input_size, "images": count,
            "seconds": round(seconds, 2), "images_per_second": round(count / seconds, 1)}


def bench_heads(num_models: int, num_samples: int, dim: int, epochs: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(num_samples, dim)).astype(np.float32)
    y = rng.integers(0, 10, size=num_samples)
    masks = rng.uniform(size=(num_models, num_samples)) < 0.5
    seeds = list(range(num_models))
    _, batched = _timed(lambda: heads.train_heads(x, y, num_classes=10, train_masks=masks,
                                                  seeds=seeds, epochs=epochs, progress=False))
    _, one_by_one = _timed(lambda: [heads.train_heads(x, y, num_classes=10,
                                                      train_masks=masks[m:m + 1],
                                                      seeds=seeds[m:m + 1], epochs=epochs,
                                                      progress=False)
                                    for m in range(num_models)])
    return {"models": num_models, "samples": num_samples, "feature_dim": dim, "epochs": epochs,
            "batched_seconds": round(batched, 2), "one_by_one_seconds": round(one_by_one, 2),
            "speed_up": round(one_by_one / batched, 2)}


def bench_heuristic(num_samples: int, dim: int, queries: int) -> dict:
    """Time h and measure its peak memory above the inputs.

    Peak RSS only grows, so this must run before anything else allocates more.
    """
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal(size=(num_samples, dim), dtype=np.float32)
    labels = rng.integers(0, 10, size=num_samples)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, seconds = _timed(lambda: heuristic.heuristic_h(vectors, labels,
                                                      query_indices=np.arange(queries)))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"samples": num_samples, "dim": dim, "queries": queries, "seconds": round(seconds, 2),
            "peak_rss_growth_mib": round((after - before) / 1024, 1),
            "input_mib": round(vectors.nbytes / 2**20, 1)}


def bench_crafting(extractor_name: str, input_size: int, count: int, iterations: int) -> dict:
    pool = data.load_source("mnist5k", "train")
    images = pool.read(np.arange(2 * count))
    extractor = extractors.build_extractor(extractor_name, input_size=input_size)
    config = poisoning.CraftingConfig(iterations=iterations)
    _, seconds = _timed(lambda: poisoning.craft_feature_collisions(
        extractor, images[:count], images[count:], config=config, progress=False))
    return {"extractor": extractor_name, "input_size": input_size, "poisons": count,
            "iterations": iterations, "seconds": round(seconds, 2),
            "ms_per_poison_iteration": round(1000 * seconds / count / iterations, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="build/bench/bench.json", help="JSON result file")
    parser.add_argument("--heuristic-samples", type=int, default=20_000,
                        help="training-set size of the h measurement")
    arguments = parser.parse_args()
    results = {
        "machine": machine_description(), "device": str(features.best_device()),
        "torch_threads": torch.get_num_threads(), "commit": git_commit(),
        # Feature space of a 1280-wide extractor, then input space of 96x96 RGB images.
        "heuristic_features": bench_heuristic(arguments.heuristic_samples, 1280, 1_000),
        "heuristic_input": bench_heuristic(arguments.heuristic_samples, 96 * 96 * 3, 100),
        "features": bench_features("efficientnet_lite0", 96, 512),
        "heads": bench_heads(16, 4_000, 1280, 5),
        "crafting": bench_crafting("efficientnet_lite0", 96, 50, 5),
    }
    output = Path(arguments.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    for name, value in results.items():
        print(f"{name:>10}: {value}")


if __name__ == "__main__":
    main()
