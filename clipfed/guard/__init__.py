"""The teacher guard (METHOD.md part 5): audit a possibly backdoored teacher with a segmentation
oracle (``audit``, ``oracle``), repair it with a compact fine-tuning set (``repair``), and the
run-time policy off/warn/refuse/repair (``policy``); ``cli`` is ``clipfed teacher audit``."""
