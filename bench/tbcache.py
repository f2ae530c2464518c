"""TCG translation-cache size against QEMU's resident memory and in-guest compute speed.

For each size (0 = QEMU's default, 1 GiB) one chat VM boots with
``SOMNUS_TB_CACHE_MIB`` set, its model loads, and then: QEMU's RSS when idle, the
time of memory searches (each embeds the query with llama.cpp in the guest: the
model's own kernels, short enough to run under TCG), one short chat answer's prompt
and decode tokens/s (llama.cpp's own timings), and QEMU's RSS after them.
Prints ONE JSON line. Usage: python -m bench.tbcache [--sizes 0,512,256] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from bench.vmhome import log, scratch_host
from guest_agent.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    ChatRole,
    MemorySearchRequest,
    SomnusChatOptions,
    Subsystem,
)
from orchestrator.budget import qemu_rss_mib

QUERY = "why is the sky blue"  # a few tokens: one embedding takes seconds under TCG
# No memory and nothing stored: the prompt is the stack's fixed layers and this line.
ANSWER = ChatCompletionRequest(
    messages=[ChatMessage(role=ChatRole.USER, content="Say hi.")], max_tokens=4, temperature=0.0,
    somnus=SomnusChatOptions(use_memory=False, store=False, working_memory_turns=0))


def measure(tb_cache_mib: int, memory_mib: int, runs: int) -> dict[str, object]:
    os.environ["SOMNUS_TB_CACHE_MIB"] = str(tb_cache_mib)
    with scratch_host() as host:
        service = host.vms
        record, _ = service.create("tb", Subsystem.CHAT, memory_mib, 2, progress=log)
        agent = service.agent(record)
        agent.wait_model(timeout_s=600)
        time.sleep(10)  # let the boot's last work settle before calling the guest idle
        idle = qemu_rss_mib(service.hv, record.domain_name)
        seconds = []
        for run in range(runs):
            started = time.monotonic()
            agent.memory_search(MemorySearchRequest(query=f"{QUERY} {run}"))
            seconds.append(round(time.monotonic() - started, 2))
            log(f"tb-cache {tb_cache_mib or 'default'}: search {run + 1}: {seconds[-1]} s")
        started = time.monotonic()
        timings = agent.chat(ANSWER).timings
        log(f"tb-cache {tb_cache_mib or 'default'}: answer in {time.monotonic() - started:.1f} s")
        return {
            "tb_cache_mib": tb_cache_mib or "default (1024)",
            "prompt_tokens": timings.prompt_n,
            "prompt_tokens_per_s": round(timings.prompt_n / timings.prompt_ms * 1000, 2),
            "decode_tokens_per_s": round(timings.predicted_per_second, 3),
            "qemu_rss_idle_mib": idle,
            "qemu_rss_after_mib": qemu_rss_mib(service.hv, record.domain_name),
            "search_s": seconds,
            "search_p50_s": statistics.median(seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="0,512,256",
                        help="comma-separated MiB; 0 is QEMU's default")
    parser.add_argument("--memory", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(int(size), args.memory, args.runs) for size in args.sizes.split(",")]
    print(json.dumps({"bench": "tbcache", "memory_mib": args.memory, "rows": rows}))


if __name__ == "__main__":
    main()
