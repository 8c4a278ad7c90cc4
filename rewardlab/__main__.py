from rewardlab.cli import run

run()
