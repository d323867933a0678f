"""A small inventory module: the fixture `dlm-lsp bench` tests sample cursor positions from."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Item:
    name: str
    quantity: int = 0
    tags: list[str] = field(default_factory=list)

    def restock(self, amount: int) -> None:
        if amount < 0:
            raise ValueError("amount must be positive")
        self.quantity += amount

    def take(self, amount: int) -> int:
        taken = min(amount, self.quantity)
        self.quantity -= taken
        return taken


class Inventory:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[str, Item] = {}

    def load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as stream:
            raw = json.load(stream)
        for entry in raw:
            item = Item(entry["name"], entry.get("quantity", 0),
                        list(entry.get("tags", [])))
            self.items[item.name] = item

    def save(self) -> None:
        data = [
            {"name": item.name, "quantity": item.quantity, "tags": item.tags}
            for item in self.items.values()
        ]
        with open(self.path, "w", encoding="utf-8") as stream:
            json.dump(data, stream, indent=2)

    def add(self, name: str, quantity: int = 0, *tags: str) -> Item:
        item = self.items.get(name)
        if item is None:
            item = Item(name, quantity, list(tags))
            self.items[name] = item
        else:
            item.restock(quantity)
        return item

    def tagged(self, tag: str) -> list[Item]:
        return [item for item in self.items.values() if tag in item.tags]

    def total(self) -> int:
        count = 0
        for item in self.items.values():
            count += item.quantity
        return count

    def report(self) -> str:
        lines = []
        for name in sorted(self.items):
            item = self.items[name]
            lines.append(f"{name:20} {item.quantity:6d} {', '.join(item.tags)}")
        return "\n".join(lines)


def main(argv: list[str]) -> int:
    inventory = Inventory(Path(argv[0]) if argv else Path("inventory.json"))
    inventory.load()
    for spec in argv[1:]:
        name, _, amount = spec.partition("=")
        inventory.add(name, int(amount or 1))
    inventory.save()
    print(inventory.report())
    return 0
