"""``somnus chat``, ``somnus memory`` and ``somnus prompt``: talk to a VM's agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import Clock, JsonFlag, emit_json, err, host, out
from guest_agent.protocol import (
    MemoryCreate,
    MemoryImportance,
    MemorySearchRequest,
    MemoryType,
    RetrievalMode,
    SomnusReport,
    Subsystem,
)
from orchestrator.chat import ChatService

memory_app = typer.Typer(help="A VM's semantic memory.", no_args_is_help=True)
prompt_app = typer.Typer(help="Inspect the prompts a VM's agent assembles.",
                         no_args_is_help=True)

VMArg = Annotated[str | None, typer.Argument(help="VM or subsystem (default: foreground).")]
Temperature = Annotated[float | None, typer.Option(help="Sampling temperature.")]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help="Answer length limit.")]


def _report_line(report: SomnusReport) -> str:
    window = report.context_window
    cut = ", ".join(f"{t.layer.value} -{t.tokens_removed}" for t in report.truncated)
    used = f"{window.current_tokens}/{window.max_tokens} tokens"
    return (f"[{used}, {len(report.memories_used)} memories"
            + (f", truncated: {cut}" if cut else "") + "]")


def _one_turn(chat: ChatService, vm: str | None, message: str, new: bool,
              temperature: float | None, max_tokens: int | None) -> str:
    report: SomnusReport | None = None
    parts: list[str] = []
    for chunk in chat.stream(vm, message, new=new, progress=Clock(),
                             temperature=temperature, max_tokens=max_tokens):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            sys.stdout.write(choice.delta.content or "")
            sys.stdout.flush()
        report = chunk.somnus or report
    sys.stdout.write("\n")
    if report is not None:
        err.print(_report_line(report), style="dim", highlight=False)
    return "".join(parts)


def _keep_code(vm: str | None, answer: str) -> dict[str, str] | None:
    """In the artifacts VM, an answer's code blocks become an artifact (as the original
    design's artifacts chat does); elsewhere nothing happens."""
    somnus = host()
    ref = vm or somnus.store.foreground()
    if ref is None or somnus.swap.resolve(ref).subsystem is not Subsystem.ARTIFACTS:
        return None
    row = somnus.artifacts.from_answer(answer)
    return None if row is None else {"artifact": row.name, "language": row.language,
                                     "entry": row.entry}


def _announce(kept: dict[str, str] | None) -> None:
    if kept:
        err.print(f"artifact '{kept['artifact']}' made from the answer's {kept['language']} "
                  f"code: 'somnus artifact run {kept['artifact']}'", highlight=False)


def chat(
    vm: VMArg = None,
    message: Annotated[str | None, typer.Option("--message", "-m",
                                                help="Ask one question and exit.")] = None,
    new: Annotated[bool, typer.Option(help="Start a new conversation.")] = False,
    temperature: Temperature = None,
    max_tokens: MaxTokens = None,
    as_json: JsonFlag = False,
) -> None:
    """Chat with the local model inside a VM (streams the answer)."""
    chat_service = host().chat
    if message is not None and as_json:
        record, response = chat_service.ask(vm, message, new=new, progress=Clock(),
                                            temperature=temperature, max_tokens=max_tokens)
        kept = _keep_code(record.name, response.choices[0].message.content)
        emit_json({"vm": record.name, **response.model_dump(mode="json"),
                   **({"artifact": kept} if kept else {})})
        return
    if message is not None:
        _announce(_keep_code(vm, _one_turn(chat_service, vm, message, new, temperature,
                                           max_tokens)))
        return
    err.print("chat: type a message, an empty line or Ctrl-D to quit", style="dim")
    first = True
    for line in sys.stdin:
        if not line.strip():
            break
        _announce(_keep_code(vm, _one_turn(chat_service, vm, line.strip(), new and first,
                                           temperature, max_tokens)))
        first = False


@memory_app.command("add")
def memory_add(
    vm: str,
    content: str,
    memory_type: Annotated[MemoryType, typer.Option("--type")] = MemoryType.CORE_FACT,
    importance: Annotated[MemoryImportance, typer.Option()] = MemoryImportance.MEDIUM,
    as_json: JsonFlag = False,
) -> None:
    """Store one memory in a VM."""
    result = host().chat.agent(vm, Clock()).memory_add(
        MemoryCreate(content=content, memory_type=memory_type, importance=importance))
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        dup = " (already known)" if result.deduplicated else ""
        out.print(f"memory {result.memory.memory_id}{dup}")


@memory_app.command("search")
def memory_search(
    vm: str,
    query: str,
    top_k: Annotated[int, typer.Option("--top-k", "-k")] = 5,
    memory_type: Annotated[list[MemoryType] | None, typer.Option("--type")] = None,
    min_importance: Annotated[MemoryImportance | None, typer.Option()] = None,
    mode: Annotated[RetrievalMode, typer.Option(
        help="hybrid: meaning and words fused; vector: meaning; keyword: words (BM25)")
    ] = RetrievalMode.HYBRID,
    chunks_per_memory: Annotated[int, typer.Option(
        min=1, max=20, help="how many passages of one long memory may be separate hits")] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Search a VM's memory by meaning and words; a long memory's hit shows its passage."""
    result = host().chat.agent(vm, Clock()).memory_search(MemorySearchRequest(
        query=query, top_k=top_k, memory_types=memory_type, min_importance=min_importance,
        mode=mode, chunks_per_memory=chunks_per_memory))
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    table = Table("SCORE", "TYPE", "IMPORTANCE", "PASSAGE")
    for hit in result.hits:
        passage = hit.chunk.text if hit.chunk else hit.memory.content
        where = f"[chunk {hit.chunk.position}] " if hit.chunk and hit.chunk.position else ""
        table.add_row(f"{hit.score:.3f}", hit.memory.memory_type.value,
                      hit.memory.importance.value, where + " ".join(passage.split())[:100])
    out.print(table)


@memory_app.command("list")
def memory_list(
    vm: str,
    limit: int = 50,
    memory_type: Annotated[MemoryType | None, typer.Option("--type")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List a VM's memories, newest first."""
    result = host().chat.agent(vm, Clock()).memory_list(0, limit, memory_type)
    if as_json:
        emit_json(result.model_dump(mode="json"))
        return
    table = Table("ID", "TYPE", "IMPORTANCE", "CONTENT")
    for m in result.memories:
        table.add_row(m.memory_id, m.memory_type.value, m.importance.value, m.content[:90])
    out.print(table)
    out.print(f"{len(result.memories)} of {result.total}")


@memory_app.command("export")
def memory_export(
    vm: str,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="File (default: stdout).")] = None,
) -> None:
    """Export a VM's memories as JSON lines."""
    text = host().chat.agent(vm, Clock()).memory_export()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        count = text.count("\n")  # one JSON line each; not splitlines (U+2028 in a text)
        err.print(f"{count} memories written to {output}")


@memory_app.command("import")
def memory_import(vm: str, source: Path, as_json: JsonFlag = False) -> None:
    """Import memories (JSON lines, as exported) into a VM."""
    result = host().chat.agent(vm, Clock()).memory_import(source.read_text())
    if as_json:
        emit_json(result.model_dump(mode="json"))
    else:
        out.print(f"imported {result.imported}, {result.deduplicated} already known")


@prompt_app.command("show")
def prompt_show(vm: VMArg = None, as_json: JsonFlag = False) -> None:
    """The last prompt the agent assembled: layers in order, tokens each, what was cut."""
    inspection = host().chat.agent(vm, Clock()).last_prompt()
    if as_json:
        emit_json(inspection.model_dump(mode="json"))
        return
    window = inspection.context_window
    out.print(f"strategy {inspection.strategy.value}"
              + (f", role {inspection.role}" if inspection.role else "")
              + f"; {inspection.prompt_tokens} prompt tokens of {window.max_tokens}")
    table = Table("LAYER", "TOKENS", "ITEMS", "TEXT")
    for layer in inspection.layers:
        text = " | ".join(m.content for m in layer.messages)
        table.add_row(layer.layer.value, str(layer.tokens), str(layer.items), text[:80])
    out.print(table)
    for cut in inspection.truncated:
        out.print(f"truncated: {cut.model_dump_json()}")
