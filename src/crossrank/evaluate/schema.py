"""The documented layout of ``results.json`` (kept in one place: the package docstring and report.md both show it)."""

SCHEMA_DOC = """\
results.json (schema_version 1). All latencies are milliseconds on the machine that ran the evaluation; every
latency summary is ``{"p50", "p95", "mean", "n"}`` (n = number of timed queries). Metric values are in [0, 1].

Common keys:
  schema_version  int, 1
  kind            "beir" | "answer_selection"
  created         local time the run started, ISO 8601
  duration_s      wall-clock seconds of the run
  machine         {platform, processor, cpu_model (from /proc/cpuinfo where readable), cpu_count, python,
                  load_average_at_start, torch_threads, cuda}

kind == "beir":
  dataset     {name, path, split, n_queries (evaluated), n_queries_in_split, n_docs, n_judgments,
               has_answers, graded}
  settings    {retrievers, rerankers, fusions, ks, ns, rerank_max_k ({retriever: deepest reranked K}),
               max_queries, latency_queries, unit: "document",
               metrics_library: "ranx"}
  index       {path, status (loaded | built | ...rebuilt), built_s, methods, chunk_tokens (0 = whole documents),
               passages, dense_model} or null when only Retriever objects were given
  first_stage {retriever: {depth (= max K), latency_ms (all queries, one search at a time), failed_queries}}
  rerankers   {label: {spec, name, fingerprint, cache_file, pairs_in_cache_before, pairs_scored (new this run),
               pairs_scored_in_sweep, sweep_scoring_s, pairs_per_s, latency_ms: {K: summary of reranker.score wall
               clock on the top-K of latency_queries sampled queries}, latency_sample: {queries_per_k, timed_calls,
               timings_reused, pairs_recomputed_for_timing, timed_cache_hits}, fusions: {label: note}, info}}
  answers     null, or {questions_with_answers, ns, normalisation, llm?: {base_url, model, timeout_s, concurrency,
               temperature, max_tokens, prompt_version, ks, ns, n_questions, distinct_prompts, request_errors,
               cache_file}}
  configs     list, one per (retriever, reranker, fusion, K); first-stage rows have reranker = fusion = "none":
      id                     "retriever|reranker|fusion|K"
      retriever, reranker, fusion ("none" | "rrf" | "interpolate:<w>" | "confidence:<w>"), k
      metrics                {"ndcg@10", "mrr@10", "map@100", "recall@k"} of the final list (K documents)
      first_stage_recall@k   Recall@K of the first stage: the ceiling of any reranking of its top-K
      first_stage_ndcg@10    nDCG@10 of the first stage
      delta_ndcg@10          metrics.ndcg@10 - first_stage_ndcg@10
      wins, losses, ties     queries whose nDCG@10 the reranking raised / lowered / left (null for first stages)
      latency_ms             {retrieve: all queries, rerank: sampled queries (null for first stages),
                              total: retrieve + rerank on the same sampled queries (first stages: = retrieve),
                              retrieve_on_sample}
      answer_in_top_n        (answer datasets) {"N": share of questions with a gold answer in the first N
                              passages, null when N > K}
      llm_answer_accuracy    (with an LLM) {"N": {exact, contains, errors, n_questions}}
per_query.json: {"metric": "ndcg@10", "per_query": {config id: {qid: value}},
                 answer_first_hit?: (answer datasets) {config id: {qid: 0-based position of the first passage
                                    holding a gold answer within K, or null}}}

kind == "answer_selection":
  dataset   {name, path, split, n_questions, n_questions_evaluated, n_questions_excluded_no_positive,
             n_pairs_evaluated, mean_candidates, first_candidate_positive_share, sorted_by_label_share}
  warnings  list of strings (e.g. a file sorted by label, which makes the file-order baseline meaningless)
  settings  {rerankers, max_queries, metrics_library, exclusion}
  methods   list: first {"name": "file order"} (the baseline), then one per reranker:
            {name, reranker, fingerprint, metrics: {MAP, MRR, P@1}, wins, losses, ties (per-question AP vs file
             order), pairs_scored, cache_file, latency_ms (one reranker.score call per question), info}
per_query.json: {"metric": "map", "per_query": {method: {qid: AP}}}

tune.json (written by tune): the Recommendation (see crossrank.evaluate.tune).
"""
