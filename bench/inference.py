"""Inference benchmark: time to first token and tokens/s for one fixed prompt.

Local (default): loads the model in-process and runs the agent's own chat path
(prompt stack, llama.cpp) with memory off. Remote: ``--url`` and ``--token``
stream the same request from a running agent (e.g. inside a VM) over SSE. ``--vm``
boots a scratch VM and measures its agent on each llama.cpp build in turn, side by
side with the host: under TCG, ``portable`` (the wheel's AVX2 backend, the shipped
Q4_1) is what guests ran before, ``emulation`` (no SIMD, Q4_0) what they run now.
Prints ONE JSON line.
Usage: python -m bench.inference [--runs N] [--max-tokens N] [--url URL --token TOKEN]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from guest_agent.llama_build import ENV_VAR as LLAMA_BUILD_ENV
from guest_agent.llama_build import LlamaBuild

PROMPT = "Explain in three sentences why the sky is blue."


def request_body(max_tokens: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "somnus": {"use_memory": False, "store": False},
    }


def run_local(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, Any]]:
    # Imported here: a remote run needs only httpx, not llama.cpp.
    from guest_agent.chat import ChatEngine
    from guest_agent.memory.manager import MemoryManager
    from guest_agent.prompts.bridge import PromptBridge
    from guest_agent.protocol import AIModelConfiguration, ChatCompletionRequest, Subsystem
    from guest_agent.runtime import ModelRuntime

    data = Path(tempfile.mkdtemp(prefix="somnus-bench-"))
    config = AIModelConfiguration(
        n_threads=args.threads, context_length=args.ctx, model_path=args.model_path
    )
    runtime = ModelRuntime(config, data)
    started = time.perf_counter()
    runtime.load()
    load_s = time.perf_counter() - started
    memory = MemoryManager(data)
    engine = ChatEngine(runtime, memory, PromptBridge(memory.store, Subsystem.CHAT))
    runs = []
    for _ in range(args.runs + 1):  # the first run warms caches and is dropped
        t0 = time.perf_counter()
        turn = engine.prepare(ChatCompletionRequest.model_validate(request_body(args.max_tokens)))
        first = None
        for _piece in turn:
            first = first or time.perf_counter()
        end = time.perf_counter()
        assert turn.usage is not None and turn.timings is not None
        runs.append(
            {
                "ttft_ms": ((first or end) - t0) * 1000,
                "completion_tokens": turn.usage.completion_tokens,
                "prompt_tokens": turn.usage.prompt_tokens,
                "decode_tokens_per_s": turn.timings.predicted_per_second,
                "prompt_tokens_per_s": prompt_rate(turn.timings.prompt_n, turn.timings.prompt_ms),
                "e2e_tokens_per_s": turn.usage.completion_tokens / (end - t0),
            }
        )
    status = runtime.status()
    return runs[1:], {
        "load_s": round(load_s, 3),
        "model": status.loaded_path,
        "n_ctx": status.n_ctx,
    }


def run_remote(args: argparse.Namespace) -> tuple[list[dict[str, float]], dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {args.token}"}
    url = args.url.rstrip("/") + "/v1/chat/completions"
    runs = []
    with httpx.Client(timeout=600) as client:
        for _ in range(args.runs + 1):
            t0 = time.perf_counter()
            first = None
            final: dict[str, Any] = {}
            with client.stream(
                "POST", url, json=request_body(args.max_tokens), headers=headers
            ) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk["choices"][0]["delta"].get("content"):
                        first = first or time.perf_counter()
                    if chunk.get("usage"):
                        final = chunk
            end = time.perf_counter()
            usage, timings = final["usage"], final["timings"]
            runs.append(
                {
                    "ttft_ms": ((first or end) - t0) * 1000,
                    "completion_tokens": usage["completion_tokens"],
                    "prompt_tokens": usage["prompt_tokens"],
                    "decode_tokens_per_s": timings["predicted_per_second"],
                    "prompt_tokens_per_s": prompt_rate(timings["prompt_n"], timings["prompt_ms"]),
                    "e2e_tokens_per_s": usage["completion_tokens"] / (end - t0),
                }
            )
        health = client.get(args.url.rstrip("/") + "/model", headers=headers).json()
    return runs[1:], {"model": health.get("loaded_path"), "n_ctx": health.get("n_ctx")}


def prompt_rate(tokens: int, ms: float) -> float:
    """Prompt evaluation speed, tokens/s."""
    return tokens / ms * 1000 if ms > 0 else 0.0


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    def p50(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 2)

    return {
        "runs": len(runs),
        "prompt_tokens": int(runs[0]["prompt_tokens"]),
        "completion_tokens_p50": p50("completion_tokens"),
        "ttft_ms_p50": p50("ttft_ms"),
        "prompt_tokens_per_s_p50": p50("prompt_tokens_per_s"),
        "decode_tokens_per_s_p50": p50("decode_tokens_per_s"),
        "e2e_tokens_per_s_p50": p50("e2e_tokens_per_s"),
    }


# What a TCG guest ran before (the wheel's AVX2/FMA backend, the shipped Q4_1) and what it
# runs now (no SIMD, Q4_0): guest_agent.llama_build, chosen here by its override.
VM_BUILDS = (LlamaBuild.PORTABLE, LlamaBuild.EMULATION)


def run_in_scratch_vm(args: argparse.Namespace) -> dict[str, Any]:
    """Boot a VM of our own, measure its agent on each llama.cpp build, delete it."""
    from bench.vmhome import log, scratch_host
    from guest_agent.protocol import Subsystem

    with scratch_host() as host:
        service = host.vms
        record, _ = service.create("infer", Subsystem.CHAT, progress=log)
        agent = service.agent(record)
        args.url, args.token = agent.base_url, service.paths("infer").token.read_text()
        figures: dict[str, Any] = {"accel": record.accel}
        for build in VM_BUILDS:
            restart = (f"sudo systemctl set-environment {LLAMA_BUILD_ENV}={build} "
                       "&& sudo systemctl restart somnus-agent")
            if service.run("infer", restart).exit_code != 0:
                raise RuntimeError(f"could not restart the agent on the {build} build")
            agent.wait_model(timeout_s=600)
            log(f"measuring the {build} build")
            runs, extra = run_remote(args)
            figures[build] = {**summarise(runs), **extra}
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="agent base URL, e.g. http://127.0.0.1:42902")
    parser.add_argument("--token", help="the VM's agent token (with --url)")
    parser.add_argument("--vm", action="store_true",
                        help="also boot a scratch VM and compare it with the host")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="local context length")
    parser.add_argument("--model-path", default=None, help="local GGUF (default: bundled)")
    args = parser.parse_args()
    if args.url and not args.token:
        parser.error("--url needs --token")
    figures: dict[str, Any] = {"bench": "inference", "prompt": PROMPT,
                               "max_tokens": args.max_tokens}
    if args.vm:
        figures["vm"] = run_in_scratch_vm(args)
        args.url = None
    if args.url:
        runs, extra = run_remote(args)
        figures.update(target=args.url, **summarise(runs), **extra)
    else:
        runs, extra = run_local(args)
        figures.update(target="local", threads=args.threads, **summarise(runs), **extra)
    if args.vm:
        vm = figures["vm"]
        before, after = (vm[build] for build in VM_BUILDS)
        figures["vm_speedup"] = {
            "decode": round(after["decode_tokens_per_s_p50"]
                            / before["decode_tokens_per_s_p50"], 2),
            "ttft": round(before["ttft_ms_p50"] / after["ttft_ms_p50"], 2),
            "prompt_eval": round(after["prompt_tokens_per_s_p50"]
                                 / before["prompt_tokens_per_s_p50"], 2),
        }
        figures["vm_over_host"] = {
            "decode_tokens_per_s": round(after["decode_tokens_per_s_p50"]
                                         / figures["decode_tokens_per_s_p50"], 4),
            "ttft": round(after["ttft_ms_p50"] / figures["ttft_ms_p50"], 1),
        }
    # The host is shared (image builds, VMs): read the figures against it.
    figures["host_loadavg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
