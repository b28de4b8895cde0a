"""RST-Bench: tabular benchmarks of rst-tune's search space, and the replay harness that runs
searchers on them. Problems (`problems`), the table format (`table`), the metric (`metric`), the
searchers (`searchers`) and the simulator (`replay`); the scripts are benchmarks/rst_bench_*.py."""
