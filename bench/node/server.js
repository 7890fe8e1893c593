// Node's cluster + Express, exactly as the classic example does it: the master
// forks one worker per CPU and forks a new one whenever a worker exits.
// PORT sets the port (default 8000); the bench starts it with node server.js.
'use strict';
const cluster = require('cluster');
const os = require('os');

const port = Number(process.env.PORT || 8000);

if (cluster.isPrimary) {
  const n = os.cpus().length;
  for (let i = 0; i < n; i++) cluster.fork();
  cluster.on('exit', (worker, code, signal) => {
    console.log(`worker ${worker.process.pid} died (${signal || code}); forking a new one`);
    cluster.fork();
  });
} else {
  const express = require('express');
  const app = express();
  app.get('/', (req, res) => {
    res.set('X-Worker-Pid', String(process.pid));
    res.type('text/plain').send('Hello World!');
  });
  // Reads a POSTed body whole, as the Python apps do (bench/apps.py): the target of
  // the bench's slow-body attack.
  app.post('/', (req, res) => {
    let got = 0;
    req.on('data', (chunk) => { got += chunk.length; });
    req.on('end', () => {
      res.set('X-Worker-Pid', String(process.pid));
      res.type('text/plain').send(`got ${got} bytes\n`);
    });
  });
  app.listen(port, '127.0.0.1', () => {
    console.log(`worker ${process.pid} listening on ${port}`);
  });
}
