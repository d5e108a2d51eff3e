"""The Faust worker: a thin adapter that feeds Kafka records to the core and writes its
outputs before its state (docs/design.md §2-§4, §7).
"""
