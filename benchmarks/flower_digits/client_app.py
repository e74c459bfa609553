"""The Flower ClientApp: local training of one client on its digits samples (15 with 100 clients, 1-2 with 1 000)."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flower_digits.task import Net, client_loader, train

app = ClientApp()


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    """Load the global model, train it locally, reply with the new weights and the sample count."""
    cfg = msg.content["config"]
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid = int(context.node_config["partition-id"])
    rnd = int(cfg["server-round"])
    # Each (seed, round, client) gets its own shuffling stream, so a run is reproducible.
    loader = client_loader(pid, int(cfg["batch-size"]), seed=int(cfg["seed"]) * 1_000_003 + rnd * 1_000 + pid)
    loss, steps = train(model, loader, int(cfg["local-epochs"]), float(cfg["lr"]))
    metrics = MetricRecord({"train_loss": loss, "steps": steps, "num-examples": len(loader.dataset)})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
