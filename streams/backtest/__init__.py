"""What flapguard would have sent: the in-process backtest, the same through a real
worker, its report and plot, the labelled feed generator, and replay onto a topic.
"""
