"""The random number generators every layer takes, typed once.

``generator`` is one ``torch.Generator`` for the whole batch or a list of one per item (each item reproducible on
its own whatever the batch it was drawn in, as in EDM and diffusers), or None for torch's global generator.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch

Generator = Optional[Union[torch.Generator, List[torch.Generator]]]
