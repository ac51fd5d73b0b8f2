#!/usr/bin/env python
# RabbitMQ tutorial 3, "Publish/Subscribe": the producer, as published for pika 1.x
# (https://www.rabbitmq.com/tutorials/tutorial-three-python). Only changes: the broker host is
# $AMQP_HOST when set (the interop tests use 127.0.0.1), `localhost` otherwise, and every print
# has flush=True so the tests see each line as it is printed.
import os
import pika
import sys

connection = pika.BlockingConnection(
    pika.ConnectionParameters(host=os.environ.get('AMQP_HOST', 'localhost')))
channel = connection.channel()

channel.exchange_declare(exchange='logs', exchange_type='fanout')

message = ' '.join(sys.argv[1:]) or "info: Hello World!"
channel.basic_publish(exchange='logs', routing_key='', body=message)
print(f" [x] Sent {message}", flush=True)
connection.close()
