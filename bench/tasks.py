"""The prompts of the speculation benchmarks and tests, in one place: bench/spec.py and
bench/gpu.py run them, tests/worker/backend/test_speculative.py and
tests/worker/test_speculative_e2e.py check speculation on them. Data only (standard library,
no imports): a test reads it with runpy, a bench script imports it from its own folder.

  grounded  rewrite a given code block with one name changed (the answer repeats the input,
            which prompt lookup can draft)
  quotes    summarise a given passage, quoting its sentences (grounded too)
  free      continue a story (little to look up)
"""

FUNCTIONS = (
    """def total_price(items, tax_rate):
    subtotal = 0
    for item in items:
        subtotal += item.price * item.quantity
    tax = subtotal * tax_rate
    return subtotal + tax
""",
    """def average_price(items):
    if not items:
        return 0
    return sum(item.price for item in items) / len(items)
""",
    """def most_expensive(items):
    best = None
    for item in items:
        if best is None or item.price > best.price:
            best = item
    return best
""",
)
CODE = "\n\n".join(FUNCTIONS)
PASSAGE = (
    "The lighthouse on the northern cape was built in 1874 from granite quarried on the island "
    "itself. Its lamp burned paraffin until 1931, when the keepers installed an electric lamp "
    "powered by a diesel generator. The last keeper left in 1989, and since then the light has "
    "been automatic, checked twice a year by engineers who arrive by boat. In winter storms the "
    "waves reach the gallery forty metres above the sea, and the tower sways by a few "
    "centimetres. Visitors may climb the 212 steps on summer weekends, when volunteers from the "
    "village open the door and tell the story of the keepers and their families.\n"
)


def rewrite(code: str = CODE, old: str = "subtotal", new: str = "net") -> str:
    """The grounded task's prompt: `code` to be rewritten with `old` renamed `new`."""
    return (
        f"Rewrite the following Python code, renaming the variable `{old}` to `{new}`.\n\n"
        f"```python\n{code}```\n\nRewritten code:\n\n```python\n"
    )


TASKS = {
    "grounded": rewrite(),
    "quotes": "Read the passage, then summarise it in three points, each quoting the sentence "
    f"of the passage it comes from word for word.\n\nPassage:\n{PASSAGE}\nSummary:\n\n1. ",
    "free": "Once upon a time, in a small village at the edge of a great forest, there lived",
}
