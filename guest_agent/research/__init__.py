"""Research runs inside the research VM's agent.

A run (``pipeline.Pipeline``) goes brief → rounds of queries, search, fetch, extract,
notes and compression → outline → report, each stage persisted in the run's folder
(``folder.RunFolder``) so a run swapped out mid-way resumes where it was. Model calls
are grammar-constrained JSON with bounded retries and deterministic fallbacks
(``llm.ResearchModel``), under hard budgets that live in code (``llm.Budget``). Every
quote in a report is copied from its source by offsets (``extract``), never written by
the model.
"""
