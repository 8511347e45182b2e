"""What a visitor is told when a request fails: our own messages as they are, anything else as an id."""
from __future__ import annotations

import functools
import logging
import re
import uuid

import gradio as gr
import torch

from rvt import CheckpointError
from rvt.preprocess import ImageInputError

from .service import NothingChosen, UserError

log = logging.getLogger("rvt-lens")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EXPECTED = (UserError, ImageInputError, CheckpointError)


def visitor_message(error: BaseException) -> str:
    """The text shown for `error`: the app's own errors verbatim (minus terminal codes), others by id."""
    if isinstance(error, EXPECTED):
        return ANSI.sub("", str(error)).strip()
    if isinstance(error, torch.cuda.OutOfMemoryError | MemoryError):
        torch.cuda.empty_cache()
        return ("The server ran out of memory for this request: lower the inference resolution or the number "
                "of attribution steps.")
    incident = uuid.uuid4().hex[:8]
    log.error("request failed (id %s)", incident, exc_info=error)
    return f"Something went wrong (id {incident}); the details are in the server log."


def guarded(fn):
    """Event handler wrapper: every failure reaches the page as a gr.Error; the server keeps serving.

    NothingChosen is a warning instead, and the event changes none of its outputs: an error would also
    badge every output as failed."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NothingChosen as e:
            gr.Warning(str(e))
            return gr.skip()
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - the point is that nothing escapes unexplained
            raise gr.Error(visitor_message(e)) from None
    return wrapper
