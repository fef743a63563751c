"""Function tools for pipelines/sales-report.yaml: deterministic, no network, no API key."""

from __future__ import annotations

import random

CATEGORIES = ["books", "games", "garden", "kitchen", "music", "outdoor", "toys"]


def load_orders(quarter: str, count: int = 400) -> list[dict]:
    """Orders of a quarter (synthetic, but the same every time for the same quarter)."""
    rng = random.Random(quarter)
    orders = []
    for i in range(count):
        category = rng.choice(CATEGORIES)
        orders.append(
            {
                "id": i + 1,
                "category": category,
                "product": f"{category}-{rng.randint(1, 12):02d}",
                "amount": round(rng.uniform(5, 250), 2),
            }
        )
    return orders


def revenue_by_category(orders: list[dict]) -> list[dict]:
    """Revenue and order count per category, largest first."""
    totals: dict[str, dict] = {}
    for order in orders:
        row = totals.setdefault(
            order["category"], {"name": order["category"], "revenue": 0.0, "orders": 0}
        )
        row["revenue"] = round(row["revenue"] + order["amount"], 2)
        row["orders"] += 1
    return sorted(totals.values(), key=lambda r: r["revenue"], reverse=True)


def top_products(orders: list[dict], top_n: int) -> list[dict]:
    """The top_n products by revenue."""
    totals: dict[str, float] = {}
    for order in orders:
        totals[order["product"]] = round(totals.get(order["product"], 0.0) + order["amount"], 2)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
    return [{"product": p, "revenue": r} for p, r in ranked]


def outlook(category: dict, total: float) -> dict:
    """A rule-based outlook for one category (an LLM step would write prose here)."""
    share = category["revenue"] / total if total else 0.0
    trend = "leading" if share >= 0.16 else "steady" if share >= 0.13 else "lagging"
    return {"category": category["name"], "share": round(100 * share, 1), "trend": trend}
