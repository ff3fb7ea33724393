"""Simulated traffic: consumers writing on every channel, business users
replying. It drives a platform through its public ``/v2`` API only, so the
demo and ``tidings simulate`` exercise exactly what a deployment runs."""

from tidings.traffic.plan import ChannelMessage, Directory, PartnerMessage, Reply, TrafficPlan
from tidings.traffic.runner import TrafficSummary, run_traffic

__all__ = ["ChannelMessage", "Directory", "PartnerMessage", "Reply", "TrafficPlan", "TrafficSummary", "run_traffic"]
