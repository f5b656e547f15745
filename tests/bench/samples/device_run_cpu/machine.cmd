python bench/machine_info.py --json WORK/machine.json
