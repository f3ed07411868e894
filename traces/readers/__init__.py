"""One reader module per source trace format; :mod:`traces.formats` dispatches to them."""
