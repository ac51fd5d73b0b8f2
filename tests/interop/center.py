#!/usr/bin/env python
# Remote results with correlation ids: the control center. The `center.py` of the article
# "python使用rabbitmq实例七，相互关联编号correlation id" (Python 2, pika 0.x), ported to
# Python 3 and pika 1.x.
#
# The original lets 5 threads share one BlockingConnection and call process_data_events on it
# concurrently. pika 1.x connections are not thread-safe, so here the main thread owns the
# connection and runs its events; a requesting thread registers its correlation_id, has the
# publish done on the connection's thread with add_callback_threadsafe, and waits on an Event
# that on_response sets. Still one connection and one exclusive callback queue, replies matched
# through the `response` dictionary keyed by correlation_id, and the original's printed lines.
#
# Usage: center.py [THREADS [REQUESTS]]. Without arguments, the original's 5 threads sending
# 10, 20, 30, 40, 50. Thread i (from 0) of THREADS sends 10 * (1 + i + k * THREADS) for k in
# range(REQUESTS) (REQUESTS defaults to 1), so every number is distinct. The broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise.
import functools
import os
import sys
import threading
import uuid

import pika

# print() writes the text and the newline separately: lines of threads could mix.
print_lock = threading.Lock()


def say(line):
    with print_lock:
        print(line)


# A requesting thread
class MyThread(threading.Thread):
    def __init__(self, func, nums):
        super(MyThread, self).__init__(daemon=True)
        self.func = func
        self.nums = nums
        self.error = None

    def run(self):
        try:
            for num in self.nums:
                say(" [x] Requesting increase(%d)" % num)
                response = self.func(num)
                say(" [.] increase(%d)=%d" % (num, response))
        except Exception as e:
            self.error = e
            raise


# The control center
class Center(object):
    def __init__(self):
        self.connection = pika.BlockingConnection(
            pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
        self.channel = self.connection.channel()

        # The queue the replies come back on
        result = self.channel.queue_declare(queue='', exclusive=True)
        self.callback_queue = result.method.queue
        self.channel.basic_consume(queue=self.callback_queue,
                                   on_message_callback=self.on_response,
                                   auto_ack=True)

        # Every result is stored in this dictionary, by correlation_id
        self.response = {}
        self.arrived = {}
        self.lock = threading.Lock()

    # Handle a reply (on the connection's thread)
    def on_response(self, ch, method, props, body):
        with self.lock:
            if props.correlation_id in self.response:
                self.response[props.correlation_id] = body
                self.arrived[props.correlation_id].set()

    # Send a computation request with the reply queue and the correlation_id (on the
    # connection's thread)
    def publish(self, n, corr_id):
        self.channel.basic_publish(exchange='',
                                   routing_key='compute_queue',
                                   properties=pika.BasicProperties(
                                       reply_to=self.callback_queue,
                                       correlation_id=corr_id,
                                   ),
                                   body=str(n))

    # Called by a requesting thread
    def request(self, n):
        corr_id = str(uuid.uuid4())
        arrived = threading.Event()
        with self.lock:
            self.response[corr_id] = None
            self.arrived[corr_id] = arrived
        self.connection.add_callback_threadsafe(functools.partial(self.publish, n, corr_id))
        # Wait for the returned data
        arrived.wait()
        with self.lock:
            del self.arrived[corr_id]
            return int(self.response.pop(corr_id))

    # Run the connection's events until every thread is done (on the main thread)
    def run(self, threads):
        while any(thread.is_alive() for thread in threads):
            self.connection.process_data_events(time_limit=0.1)


def main():
    args = [int(arg) for arg in sys.argv[1:3]]
    thread_count = args[0] if len(args) > 0 else 5
    requests = args[1] if len(args) > 1 else 1

    center = Center()

    # Start the computation requests (the original's nums = [10, 20, 30, 40, 50])
    threads = []
    for i in range(thread_count):
        nums = [10 * (1 + i + k * thread_count) for k in range(requests)]
        threads.append(MyThread(center.request, nums))
    for thread in threads:
        thread.start()
    center.run(threads)
    for thread in threads:
        thread.join()
    center.connection.close()
    if any(thread.error for thread in threads):
        sys.exit(1)


if __name__ == '__main__':
    main()
