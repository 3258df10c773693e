"""Peak host memory and time of RoutedLM.loglikelihood, the unchunked code (commit 64f2903) against
the chunked one, on the real SmolLM2-135M (V = 49152) with a 2-expert uniform ensemble.

    python benchmarks/likelihood_memory.py setup MODEL_DIR WORK_DIR     # synthetic experts (r 8, q/v)
    git show 64f2903:gs/evaluation/routed_model.py > WORK_DIR/old_inference.py      # the unchunked baseline
    python benchmarks/likelihood_memory.py run MODEL_DIR WORK_DIR old|new [CHUNK]

WORK_DIR/data/writing/reference.jsonl holds the answers scored (the default's writing reference split).

Each run is its own process: the peak resident set size after the model is loaded and warmed up
is compared with the peak after scoring (``ru_maxrss``), so the difference is what scoring adds.
"""

import json
import resource
import sys
import time

import torch

torch.set_num_threads(1)
cmd, model_dir, work = sys.argv[1:4]
if cmd == "setup":
    from gs.evaluation.latency import make_synthetic_experts
    from gs.models.load import load_model
    from gs.models.lora import LoraSpec

    lora = LoraSpec(rank=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"])
    make_synthetic_experts(load_model(model_dir, device="cpu"), 2, lora, f"{work}/experts", seed=0)
    sys.exit(0)
impl = sys.argv[4]
chunk = int(sys.argv[5]) if len(sys.argv) > 5 else 64
if impl == "old":
    sys.path.insert(0, work)
    from old_inference import RoutedLM
else:
    from gs.evaluation.routed_model import RoutedLM
rows = [json.loads(x) for x in open(f"{work}/data/writing/reference.jsonl")]
prompts = [r["instruction"] for r in rows]
answers = [r["output"].strip() for r in rows]
lm = RoutedLM(model_dir, mode="uniform", experts_dir=f"{work}/experts", device="cpu")
kw = {} if impl == "old" else {"chunk_tokens": chunk}
lm.loglikelihood(prompts[:1], ["warm up"], **kw)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
scores = lm.loglikelihood(prompts, answers, batch_size=len(prompts), **kw)
seconds = time.perf_counter() - t0
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(
    json.dumps(
        {
            "impl": impl,
            "chunk": chunk if impl == "new" else None,
            "batch": len(prompts),
            "answer_tokens": [s[2] for s in scores],
            "peak_added_mib": round((after - before) / 1024),
            "seconds": round(seconds, 1),
            "logprob": [round(s[0], 4) for s in scores],
            "greedy": [s[1] for s in scores],
        }
    )
)
