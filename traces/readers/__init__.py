"""One reader module per source trace format; :mod:`mist.traces.formats` dispatches to them."""
