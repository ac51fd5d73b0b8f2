#!/usr/bin/env python
# Remote results with correlation ids: the compute node. The `compute.py` of the article
# "python使用rabbitmq实例七，相互关联编号correlation id" (Python 2, pika 0.x), ported to
# Python 3 and pika 1.x:
#   - print() calls; the body is bytes in Python 3, so it is decoded before printing, to keep
#     the original's line ` [.] increase(10)` (not ` [.] increase(b'10')`);
#   - basic_consume(queue=..., on_message_callback=...) instead of basic_consume(callback,
#     queue=...);
#   - Ctrl-C closes the connection, prints `Interrupted` and exits 0, like the tutorial's
#     receive.py (the original dies with a traceback);
#   - the broker host is $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost`
#     otherwise.
import os
import sys

import pika


def main():
    # Connect to the RabbitMQ server
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
    channel = connection.channel()

    # Declare the queue
    channel.queue_declare(queue='compute_queue')
    print(' [*] Waiting for n')

    # Add 1 to n
    def increase(n):
        return n + 1

    # Handle a request
    def request(ch, method, props, body):
        print(" [.] increase(%s)" % (body.decode(),))
        response = increase(int(body))

        # Send the result back to the control center, with the request's correlation_id
        ch.basic_publish(exchange='',
                         routing_key=props.reply_to,
                         properties=pika.BasicProperties(correlation_id=props.correlation_id),
                         body=str(response))
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue='compute_queue', on_message_callback=request)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        connection.close()
        raise


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print('Interrupted')
        try:
            sys.exit(0)
        except SystemExit:
            os._exit(0)
