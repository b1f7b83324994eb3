// Prints its arguments and the run id with node; --exit=N exits with N.
const args = process.argv.slice(2);
args.forEach((arg, i) => console.log(`arg ${i + 1}: ${arg}`));
console.log(`hello from node ${process.version}, run ${process.env.JOBYARD_RUN_ID || "?"}`);
console.error("this line goes to stderr");
const exit = args.find((a) => a.startsWith("--exit="));
process.exitCode = exit ? Number(exit.slice("--exit=".length)) : 0;
