from .tree import Draft, accepted_slots, children, depths, verify_mask
from .verify import Verdict, verify, verify_greedy, verify_sampling

__all__ = ["Draft", "Verdict", "accepted_slots", "children", "depths", "verify", "verify_greedy",
           "verify_mask", "verify_sampling"]
