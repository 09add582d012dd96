from memplan.cli.main import run

run()
