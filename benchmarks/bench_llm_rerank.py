"""An LLM reranker on this CPU: a random model with Qwen3-Reranker-0.6B's published configuration (28 layers,
hidden 1024, 16 query / 8 key-value heads, vocabulary 151,669; no weights can be downloaded here, and speed does
not depend on them), scored through crossrank's engine, through sentence-transformers' own causal-LM
``CrossEncoder`` path (the same prompt, as a chat template), and by a naive loop (one transformers forward pass per
pair, the whole vocabulary's logits at the last position), in the same process, alternating. Pairs of
``--tokens`` tokens each, prompt included.

    python benchmarks/bench_llm_rerank.py --pairs 24 --runs 3

Reports pairs/s (median of ``--runs``), the ratio to sentence-transformers, agreement of the scores with the
naive loop, the resident memory each path added (loading and its first call: the weights are
memory-mapped, so their pages count once touched) and the process's peak RSS. Results:
``benchmarks/results/bench_llm_rerank.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_rerank import cpu_info, versions  # noqa: E402

# Qwen/Qwen3-Reranker-0.6B's config.json (its Qwen3-0.6B base)
QWEN3_RERANKER_06B = dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                          num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                          rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
WORDS = ("the capital of france is paris plants make glucose from sunlight water and carbon dioxide gravity "
         "attracts two bodies towards each other volcanoes erupt when magma rises through the crust").split()


def _rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def build_checkpoint(out: Path, layers: int) -> Path:
    """The random Qwen3-Reranker-0.6B-shaped checkpoint (seed 0), with a byte-level BPE tokenizer trained here
    (ids below its size of 400 or so; the embedding keeps the published vocabulary size) and Qwen3-Reranker's
    prompt as a chat template for sentence-transformers. Built once."""
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from crossrank.rerank.prompts import BUILTIN

    fmt = BUILTIN["qwen3-reranker"]
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = " ".join(WORDS) + " yes no " + fmt.prefix + fmt.query + fmt.document + fmt.suffix
    tok.train_from_iterator([text] * 50, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        fmt.prefix + "<Instruct>: {{ task if task else '" + fmt.default_instruction + "' }}\n"
        "<Query>: {{ (messages | selectattr('role', 'eq', 'query') | first).content }}\n"
        "<Document>: {{ (messages | selectattr('role', 'eq', 'document') | first).content }}"
        "{{ '" + fmt.suffix.replace("\n", "\\n") + "' }}")
    fast.save_pretrained(tmp)
    torch.manual_seed(0)
    config = Qwen3Config(**{**QWEN3_RERANKER_06B, "num_hidden_layers": layers}, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id)
    model = Qwen3ForCausalLM(config)
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    os.replace(tmp, out)
    return out


def make_pairs(engine: Any, n: int, tokens: int) -> tuple[str, list[str]]:
    """A query and ``n`` documents whose full prompts are ``tokens`` tokens long (by crossrank's count)."""
    query = "what makes plants grow"
    fixed = engine.count_tokens(query, [""])
    docs = []
    for i in range(n):
        words, doc = [], ""
        while engine.count_tokens(query, [doc]) < tokens - 2:
            words.append(WORDS[(i + len(words)) % len(WORDS)])
            doc = " ".join(words)
        docs.append(doc)
    assert fixed < tokens, "the prompt alone is longer than --tokens"
    return query, docs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache", default=os.environ.get("CROSSRANK_CACHE_DIR", str(Path.home() / ".cache" / "crossrank")))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--tag", default="bench_llm_rerank")
    ap.add_argument("--layers", type=int, default=QWEN3_RERANKER_06B["num_hidden_layers"],
                    help="fewer layers for a quick check of the script (the published model has 28)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crossrank.rerank.engine import CrossEncoderReranker

    ckpt = build_checkpoint(Path(args.cache) / "bench" / f"qwen3-reranker-0.6b-random-{args.layers}l", args.layers)
    rss: dict[str, float] = {}
    base = _rss_mb()
    engine = CrossEncoderReranker(str(ckpt), activation="raw", prompt_format="qwen3-reranker")
    rss["crossrank"] = _rss_mb() - base
    query, docs = make_pairs(engine, args.pairs, args.tokens)
    base = _rss_mb()
    st = CrossEncoder(str(ckpt), device="cpu")
    rss["sentence-transformers"] = _rss_mb() - base
    base = _rss_mb()
    tok = AutoTokenizer.from_pretrained(str(ckpt))
    lm = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    rss["naive loop"] = _rss_mb() - base
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")

    def run_crossrank():
        return engine.score(query, docs).scores

    def run_st():
        return [float(x) for x in st.predict([(query, d) for d in docs], activation_fn=torch.nn.Identity(),
                                             batch_size=8, show_progress_bar=False)]

    def run_naive():
        out = []
        with torch.inference_mode():
            for d in docs:
                ids = engine.pair_inputs(query, d)[0]["input_ids"]
                logits = lm(torch.tensor([ids])).logits[0, -1]
                out.append(float(logits[yes] - logits[no]))
        return out

    peers = {"crossrank": run_crossrank, "sentence-transformers": run_st, "naive loop": run_naive}
    times: dict[str, list[float]] = {k: [] for k in peers}
    scores: dict[str, list[float]] = {}
    names = list(peers)
    for r in range(args.runs):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            gc.collect()
            before = _rss_mb()
            t0 = time.perf_counter()
            scores[name] = peers[name]()
            times[name].append(time.perf_counter() - t0)
            if r == 0:  # weights are memory-mapped: their pages count once a forward pass touches them
                rss[name] += _rss_mb() - before
            print(f"run {r + 1}/{args.runs} {name}: {args.pairs / times[name][-1]:.2f} pairs/s", flush=True)
    ref = scores["naive loop"]
    st_med = statistics.median(times["sentence-transformers"])
    rows = {}
    for name in names:
        med = statistics.median(times[name])
        diff = float(np.max(np.abs(np.asarray(scores[name]) - np.asarray(ref))))
        rows[name] = {"median_s": med, "pairs_per_s": args.pairs / med, "x_sentence_transformers": st_med / med,
                      "max_abs_diff_vs_naive": diff, "spearman_vs_naive": float(spearmanr(scores[name], ref)[0]),
                      "rss_added_mb": rss[name], "runs_s": times[name]}
    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_info(),
              "versions": versions(), "load_avg_start": os.getloadavg(), "pairs": args.pairs,
              "tokens_per_pair": args.tokens, "runs": args.runs, "engine": engine.info(),
              "peak_rss_mb": _rss_mb("VmHWM"), "rows": rows,
              "config": {**QWEN3_RERANKER_06B, "num_hidden_layers": args.layers}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    lines = [f"# {args.tag}", "", f"{result['date']}; CPU: {result['cpu']}; load average at start "
             f"{', '.join(f'{x:.2f}' for x in result['load_avg_start'])}.", "",
             f"A random model with Qwen3-Reranker-0.6B's configuration; {args.pairs} pairs of {args.tokens} tokens "
             f"(prompt included), medians of {args.runs} runs in one process, order rotated. crossrank: "
             f"backend {engine.info()['backend']}, dtype {engine.info()['dtype']}. Peak RSS of the process "
             f"(all three loaded): {result['peak_rss_mb']:.0f} MB.", "",
             "| path | median s | pairs/s | x sentence-transformers | max abs diff vs naive | Spearman | RSS added MB (load + first call) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['median_s']:.2f} | {r['pairs_per_s']:.2f} | {r['x_sentence_transformers']:.2f} "
                     f"| {r['max_abs_diff_vs_naive']:.1e} | {r['spearman_vs_naive']:.4f} | {r['rss_added_mb']:.0f} |")
    (out / f"{args.tag}.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
